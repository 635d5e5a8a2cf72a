"""The 64-bit PV hypercall table (xen/include/hypercall-defs.c): handlers register here by
number with `@hypercall(nr)`; emu/pv/hypercall.py dispatches. Argument counts are the
prototypes' (for a debug build's clobber_regs())."""

from __future__ import annotations

from collections.abc import Callable

from unicorn import x86_const as X

ARG_REGS = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_R10, X.UC_X86_REG_R8)
CLOBBER = 0xDEADBEEFDEADF00D
DOMID_SELF = 0x7FF0
MASK64 = (1 << 64) - 1
# Argument counts (xen/include/hypercall-defs.c prototypes), for clobber_regs().
NARGS = {
    0: 1, 1: 4, 2: 2, 3: 2, 5: 1, 8: 2, 9: 1, 10: 2, 12: 2, 13: 2, 14: 3, 15: 1, 17: 2,
    18: 3, 20: 3, 21: 2, 23: 0, 24: 3, 25: 2, 26: 4, 29: 2, 30: 2, 32: 2, 33: 2, 35: 1,
}  # fmt: skip
HANDLERS: dict[int, Callable] = {}


def hypercall(nr: int):
    def reg(fn):
        HANDLERS[nr] = fn
        return fn

    return reg


def canonical(va: int) -> bool:
    return (va >> 47) in (0, 0x1FFFF)
