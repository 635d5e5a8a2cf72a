"""Argument parsing shared by the keys that take a domain or a frame (`U` `Z` `W` `X`).

Every mistake raises KeyhandlerError with one line for the console. Public: a plugin's keys
may parse their arguments with these too (`from keyhandlers.args import parse_domain`).
"""

from __future__ import annotations

from emu.mm.page import MAX_GFN
from keyhandlers import KeyhandlerError


def parse_int(text: str, what: str) -> int:
    """A number as Xen people type it: 0x... hex, or decimal."""
    try:
        v = int(text, 0)
    except ValueError:
        raise KeyhandlerError(f"bad {what} {text!r} (expected a number, 0x... for hex)") from None
    if v < 0:
        raise KeyhandlerError(f"bad {what} {text!r} (negative)")
    return v


def is_domain_arg(text: str) -> bool:
    return len(text) > 1 and text[0] == "d" and text[1:].isdigit()


def parse_domain(machine, text: str):
    """`dN` -> the live Domain; one clear error otherwise."""
    if not is_domain_arg(text):
        raise KeyhandlerError(f"bad domain {text!r} (expected dN, e.g. d1)")
    domid = int(text[1:])
    dom = machine.domains.get(domid)
    if dom is None or dom.is_dying:
        raise KeyhandlerError(f"no domain d{domid}")
    return dom


def parse_range(text: str) -> tuple[int, int]:
    """`FIRST-LAST` (inclusive gfns)."""
    a, sep, b = text.partition("-")
    if not sep or not a or not b:
        raise KeyhandlerError(f"bad gfn range {text!r} (expected GFN_FIRST-GFN_LAST)")
    first, last = parse_int(a, "gfn"), parse_int(b, "gfn")
    if last > MAX_GFN or first > MAX_GFN:
        raise KeyhandlerError(f"gfn range {text} beyond the last possible gfn {MAX_GFN:#x}")
    if last < first:
        raise KeyhandlerError(f"reversed gfn range {first:#x}-{last:#x}")
    return first, last
