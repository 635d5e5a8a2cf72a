"""Running a key: `handle_keypress` (xen/common/keyhandler.c) and the serial-line key input.

On the serial line a key that takes arguments prints its `'k' pressed -> ...` line, then the
prompt `(XEN) k args> `; the user types a line and Enter (empty = defaults, Ctrl-C = cancel).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from keyhandlers import KEY_TABLE, KeyHandler, KeyhandlerError


class Output:
    """What a handler prints with: each call is one `(XEN) ` line."""

    def __init__(self, console) -> None:
        self.console = console

    def __call__(self, line: str = "") -> None:
        self.console.printk(line + "\n")

    def raw(self, data: bytes) -> None:
        """Bytes to the serial line only, not back into the ring (key `w`)."""
        self.console.serial_write(data)


def run_handler(machine, kh: KeyHandler, args: Sequence[str] = (), announce: bool = True) -> None:
    """Run one handler synchronously with everything printed; no exception escapes."""
    console = machine.console
    out = Output(console)
    with console.log_everything():
        if announce and kh.pressed is not None:
            out(f"'{kh.key}' pressed -> {kh.pressed}")
        try:
            kh.fn(machine, out, tuple(args))
        except KeyhandlerError as e:
            out(f"'{kh.key}': {e}")
        except BaseException as e:  # a broken handler (even sys.exit) must not take it down
            out(f"'{kh.key}' handler failed: {type(e).__name__}: {e}")


def handle_keypress(machine, key: str, args: Sequence[str] = ()) -> bool:
    """Run the handler for `key`; unknown keys are ignored silently, as in Xen."""
    kh = KEY_TABLE.get(key)
    if kh is None:
        return False
    run_handler(machine, kh, args)
    return True


class XenKeyInput:
    """Bytes the serial line hands to Xen: each is a key, or part of an argument line."""

    MAX_ARGS = 256

    def __init__(self, machine) -> None:
        self.machine = machine
        self.pending: KeyHandler | None = None
        self.line = bytearray()

    def __call__(self, c: int) -> None:
        if self.pending is not None:
            self._arg_byte(c)
            return
        kh = KEY_TABLE.get(chr(c))
        if kh is None:
            return
        if kh.args is None:
            run_handler(self.machine, kh)
            return
        console = self.machine.console
        with console.log_everything():
            console.printk(f"'{kh.key}' pressed -> {kh.pressed}\n")
            console.printk(f"{kh.key} args> ")
        self.pending = kh
        self.line.clear()

    def _arg_byte(self, c: int) -> None:
        console = self.machine.console
        if c in (0x0D, 0x0A):
            kh, text = self.pending, self.line.decode("latin-1")
            self.pending = None
            self.line.clear()
            console.end_input_line(text)
            try:
                args = shlex.split(text)
            except ValueError:
                args = text.split()
            run_handler(self.machine, kh, args, announce=False)
        elif c == 0x03:
            self.pending = None
            self.line.clear()
            console.end_input_line("^C")
        elif c in (0x08, 0x7F):
            if self.line:
                self.line.pop()
                console.serial_write(b"\b \b")
        elif 0x20 <= c < 0x7F and len(self.line) < self.MAX_ARGS:
            self.line.append(c)
            console.serial_write(bytes([c]))
