"""`X` hexdump machine memory (a key this product adds; docs/contract.md).

Args `MFN [PAGES]` (machine frames) or `dN GFN [PAGES]` (a guest's frames through its P2M);
PAGES defaults to 1 and is capped at MAX_PAGES (a line says so). Lines are `hexdump -C`'s,
with the `(XEN) ` prefix and 16-digit addresses (machine addresses, or guest-physical ones
for `dN GFN`):

    (XEN) 000000001a100000  48 65 6c 6c 6f 00 00 00  00 00 00 00 00 00 00 00  |Hello...........|
    (XEN) *
    (XEN) 000000001a101000

As in `hexdump -C`, a line equal to the one before it is replaced by `*` (once per run) and
the address just past the dump ends it. For a 64-bit PV domain the frame numbers are pfns
(its own P2M list; a PV guest is not translated) and lines say `pfn`. A guest dump starts
each page with the frame it maps to (`d1 gfn 0x100 -> mfn 0x1a100`); a hole in a guest
range is one line and skipped.
Bytes are read from machine RAM directly: nothing the guest sees changes, and no access is
recorded.
"""

from __future__ import annotations

import numpy as np

from emu.mm.page import INVALID_MFN
from keyhandlers import KeyhandlerError, keyhandler
from keyhandlers.args import is_domain_arg, parse_domain, parse_int

MAX_PAGES = 16
_PRINTABLE = np.array([chr(c) if 0x20 <= c < 0x7F else "." for c in range(256)])


def hex_lines(data: bytes | np.ndarray, base: int) -> list[str]:
    """`hexdump -C` lines for `data` (a multiple of 16 bytes) starting at address `base`."""
    a = np.frombuffer(bytes(data), dtype=np.uint8).reshape(-1, 16)
    out: list[str] = []
    prev = None
    starred = False
    for row, b in enumerate(a):
        raw = b.tobytes()
        if raw == prev:
            if not starred:
                out.append("*")
                starred = True
            continue
        prev, starred = raw, False
        h = raw.hex(" ")
        out.append(
            f"{base + row * 16:016x}  {h[:23]}  {h[24:]}  |{''.join(_PRINTABLE[b].tolist())}|"
        )
    return out


def _pages(args: tuple[str, ...], i: int) -> tuple[int, list[str]]:
    """(pages to dump, the capping notice if any): the notice is printed only once every
    argument has been checked, so a mistake is still exactly one line."""
    if len(args) <= i:
        return 1, []
    n = parse_int(args[i], "page count")
    if n == 0:
        raise KeyhandlerError("page count must be at least 1")
    if n > MAX_PAGES:
        return MAX_PAGES, [f"{n} pages asked, dumping the first {MAX_PAGES} (the most one X shows)"]
    return n, []


@keyhandler(
    "X",
    "hexdump machine memory",
    args="MFN [PAGES] | dN GFN [PAGES]",
    pressed="dumping memory",
)
def hexdump_memory(machine, out, args: tuple[str, ...]) -> None:
    if not args:
        raise KeyhandlerError("what to dump? (usage: X MFN [PAGES] or X dN GFN [PAGES])")
    ram = machine.ram
    nr = ram.nr_frames
    if is_domain_arg(args[0]):
        if len(args) < 2:
            raise KeyhandlerError("which gfn? (usage: X dN GFN [PAGES])")
        if len(args) > 3:
            raise KeyhandlerError("too many arguments (usage: X dN GFN [PAGES])")
        dom = parse_domain(machine, args[0])
        # A PV guest's frame numbers are pfns of its own P2M list (not translated gfns).
        g_ = "pfn" if getattr(dom, "pv", None) is not None else "gfn"
        gfn = parse_int(args[1], g_)
        p2m = dom.p2m
        if gfn >= len(p2m) or int(p2m[gfn]) == INVALID_MFN:
            raise KeyhandlerError(f"d{dom.domid} {g_} {gfn:#x} is not populated")
        n, lines = _pages(args, 2)
        end = min(gfn + n, len(p2m))
        for g in range(gfn, end):
            m = int(p2m[g])
            if m == INVALID_MFN or m >= nr:
                lines.append(f"d{dom.domid} {g_} {g:#x} -> hole (not populated)")
                continue
            lines.append(f"d{dom.domid} {g_} {g:#x} -> mfn {m:#x}")
            lines += hex_lines(ram.page(m), g << 12)
        if end < gfn + n:
            lines.append(f"d{dom.domid} P2M ends at {g_} {len(p2m) - 1:#x}")
        lines.append(f"{end << 12:016x}")
    else:
        if len(args) > 2:
            raise KeyhandlerError("too many arguments (usage: X MFN [PAGES])")
        mfn = parse_int(args[0], "mfn")
        if mfn >= nr:
            raise KeyhandlerError(f"mfn {mfn:#x} is past the end of RAM (last mfn {nr - 1:#x})")
        n, notice = _pages(args, 1)
        if mfn + n > nr:
            raise KeyhandlerError(
                f"mfns {mfn:#x}-{mfn + n - 1:#x} run past the end of RAM (last mfn {nr - 1:#x})"
            )
        lines = notice + hex_lines(ram.u8[mfn << 12 : (mfn + n) << 12], mfn << 12)
        lines.append(f"{(mfn + n) << 12:016x}")
    for line in lines:
        out(line)
