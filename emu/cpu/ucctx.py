"""Unicorn's saved CPU context, read and patched in place: the exception acknowledgement
every resuming interrupt hook needs, and register reads straight through the C library.

Unicorn never marks an exception delivered when a hook handles it, so the next fault would
arrive as #DF and the one after as a silent triple fault (docs/design.md, "Unicorn facts").
The hooks reset `old_exception` in the saved context; the offsets are found once by
probing a context with a marker in DR0.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib as _uclib


def _exc_offsets() -> tuple[int, int]:
    """Offsets of env->error_code and env->old_exception in a saved context (see docs/design.md)."""
    u = Uc(UC_ARCH_X86, UC_MODE_64)
    u.reg_write(X.UC_X86_REG_DR0, 0x5EED5EED5EED5EED)
    b = bytes(u.context_save())
    dr0 = b.find((0x5EED5EED5EED5EED).to_bytes(8, "little"))
    err_off, old_off = dr0 - 16, dr0 + 96
    assert struct.unpack_from("<i", b, old_off)[0] == -1, "unexpected Unicorn context layout"
    return err_off, old_off


ERR_OFF, OLD_OFF = _exc_offsets()


def ack_exception(uc: Uc) -> int:
    """The pending exception's error code; marks it delivered (upstream bug #1883)."""
    ctx = uc.context_save()
    base = ctx.context.value
    err = ctypes.c_int32.from_address(base + ERR_OFF).value
    ctypes.c_int32.from_address(base + OLD_OFF).value = -1
    uc.context_restore(ctx)
    return err & 0xFFFFFFFF


class ExceptionAck:
    """`ack_exception` for one Uc, reusing one saved context (no allocation per fault) and
    calling the C library directly (the binding's wrappers cost more than the calls)."""

    def __init__(self, uc: Uc) -> None:
        self.ctx = uc.context_save()
        base = self.ctx.context.value
        self.err = ctypes.c_int32.from_address(base + ERR_OFF)
        self.old = ctypes.c_int32.from_address(base + OLD_OFF)
        self._uch, self._raw = uc._uch, self.ctx.context
        self._save, self._restore = _uclib.uc_context_save, _uclib.uc_context_restore

    def __call__(self, uc: Uc) -> int:
        self._save(self._uch, self._raw)
        err = self.err.value
        self.old.value = -1
        self._restore(self._uch, self._raw)
        return err & 0xFFFFFFFF


class RegReader:
    """One register of one Uc read straight through the C library (the #PF hook's CR2)."""

    def __init__(self, uc: Uc, reg: int) -> None:
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)
        self._args = (uc._uch, reg)
        self._read = _uclib.uc_reg_read

    def __call__(self) -> int:
        self._read(*self._args, self._ref)
        return self._buf.value
