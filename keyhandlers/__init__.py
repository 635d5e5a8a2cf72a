"""The debug-key registry (xen/common/keyhandler.c).

A handler is `fn(machine, out, args)`: `machine` is the `emu` machine, `out` prints lines
prefixed `(XEN) `, `args` is a tuple of argument strings (empty unless the key takes
arguments). Register with `register(...)` or the `@keyhandler(...)` decorator; `h` walks the
table, so adding a key needs no other edit.

Importing this package loads no keys: the program calls `load_builtin()` at start-up (then
its plugins), so the key modules, which import this registry, never run half way through
its own import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

HandlerFn = Callable[..., None]


class KeyhandlerError(Exception):
    """Bad arguments to a key; the message becomes one `(XEN)` error line."""


@dataclass(frozen=True)
class KeyHandler:
    key: str
    fn: HandlerFn
    desc: str
    diagnostic: bool = False
    irq: bool = False
    args: str | None = None  # usage text if the key takes arguments
    pressed: str | None = None  # text after "'k' pressed -> " printed before the args prompt
    source: str = "xen"


KEY_TABLE: dict[str, KeyHandler] = {}


class KeyTakenError(ValueError):
    pass


def register(
    key: str,
    fn: HandlerFn,
    desc: str,
    diagnostic: bool = False,
    *,
    irq: bool = False,
    args: str | None = None,
    pressed: str | None = None,
    source: str = "xen",
) -> KeyHandler:
    """Install `fn` for `key`. Re-registering a key is refused, as Xen asserts."""
    if len(key) != 1 or not 0x20 < ord(key) < 0x7F:
        raise ValueError(f"key must be one printable ASCII character, got {key!r}")
    if key in KEY_TABLE:
        raise KeyTakenError(
            f"key '{key}' is already registered ({KEY_TABLE[key].desc}) by {KEY_TABLE[key].source}"
        )
    if args is not None and pressed is None:
        raise ValueError("a key that takes arguments needs its 'pressed' text")
    kh = KeyHandler(key, fn, desc, diagnostic, irq, args, pressed, source)
    KEY_TABLE[key] = kh
    return kh


def keyhandler(
    key: str,
    desc: str,
    diagnostic: bool = False,
    *,
    irq: bool = False,
    args: str | None = None,
    pressed: str | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    """Decorator form of `register`."""

    def deco(fn: HandlerFn) -> HandlerFn:
        register(
            key, fn, desc, diagnostic, irq=irq, args=args, pressed=pressed, source=fn.__module__
        )
        return fn

    return deco


def installed() -> list[KeyHandler]:
    """Every handler in ascending ASCII order, as `h` lists them."""
    return [KEY_TABLE[k] for k in sorted(KEY_TABLE)]


def handler_line(kh: KeyHandler) -> str:
    return f" key '{kh.key}' (ascii '{ord(kh.key):02x}') => {kh.desc}"


def builtin_modules() -> list[str]:
    """Every key module of this package (one per concern); not the dispatcher nor the
    argument helpers, which register nothing."""
    import pkgutil

    skip = {"dispatch", "args"}
    return [
        f"{__name__}.{m.name}"
        for m in pkgutil.iter_modules(__path__)
        if m.name not in skip and not m.name.startswith("_")
    ]


def load_builtin() -> None:
    """Register the built-in keys (once; a second call changes nothing)."""
    for name in builtin_modules():
        importlib.import_module(name)


def load_modules(names: Iterable[str]) -> None:
    for name in names:
        importlib.import_module(name)


ENTRY_POINT_GROUP = "xenconsole.keyhandlers"
_loaded_entry_points: set[str] = set()


class PluginError(Exception):
    pass


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Import every installed plugin of the entry-point group (once); returns their names.

    An entry point names a module (its `@keyhandler`s register on import) or a callable
    taking no arguments that registers its keys.
    """
    from importlib.metadata import entry_points

    loaded = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.value in _loaded_entry_points:
            continue
        _loaded_entry_points.add(ep.value)
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:
            raise PluginError(f"{ep.name} ({ep.value}): {e}") from e
        loaded.append(ep.name)
    return loaded
