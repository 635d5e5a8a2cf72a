"""Ending a vCPU's slice from inside Unicorn: a native UC_HOOK_BLOCK callback.

A slice must end between two guest instructions, on the vCPU's own thread. An `emu_stop()`
from another thread can land after an instruction's store but before it retires, so the store
runs twice on resume (tests/test_slices_exact.py); `emu_start(count=N)` is exact but makes
Unicorn call a helper on every instruction (about 7x slower); a Python block hook costs more
still. So each vCPU gets a *native* block hook: Unicorn calls it at the start of every
translated block, including blocks reached by a chained jump, so `jmp $` calls it on every
iteration. It reads a per-vCPU flag and, when the scheduler has asked for the pCPU, clears the
flag and tail-calls `uc_emu_stop(uc)`. Unicorn 2.1 emits the block hook *before* the block's
exit-request check (qemu/accel/tcg/translator.c: `gen_uc_tracecode(... UC_HOOK_BLOCK ...)`
precedes `gen_tb_start`), so the stop takes effect before the block's first instruction runs:
the run ends at a block boundary with every earlier instruction retired.

How the callback exists: machine code written at run time into a private anonymous mapping
that is then made read+execute (never writable and executable at once). No compiler is
needed at install or at run time, and the code is 25 bytes that do not depend on Python,
the binding or Unicorn's struct layouts, only on the C ABI of a hook (System V x86-64:
rdi = uc, rsi = address, edx = size, rcx = user_data) and the address of `uc_emu_stop`,
taken from the binding's own ctypes library object. A C extension would add a compiler to
every install for the same 25 bytes. Where the mapping is refused (a hardened kernel or
SELinux `execmem` policy, a host that is not x86-64 System V), `stop_hook()` returns None,
one warning line goes to stderr, and the vCPUs fall back to counted slices.

The bytes (`user_data` is the address of the vCPU's 2-byte flag: byte 0 = "stop requested",
byte 1 = set when this hook stops the run):

    80 39 00           cmp  byte ptr [rcx], 0     ; requested?
    75 01              jne  stop
    c3                 ret                        ; the usual case: 3 instructions
    c6 01 00     stop: mov  byte ptr [rcx], 0     ; answered
    c6 41 01 01        mov  byte ptr [rcx+1], 1   ; "this hook ended the run"
    48 b8 <imm64>      movabs rax, uc_emu_stop
    ff e0              jmp  rax                   ; tail call uc_emu_stop(uc): rdi is still uc

A block hook may call `uc_emu_stop` (the Unicorn API allows it from any hook); the tail call
returns straight to Unicorn's hook dispatcher.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from collections.abc import Callable

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib as _uclib

PAGE = 4096
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
FLAG_KICK, FLAG_STOPPED = 0, 1  # byte offsets in a vCPU's flag

_HEAD = bytes.fromhex("803900 7501 c3 c60100 c6410101 48b8")
_TAIL = bytes.fromhex("ffe0")

_state: dict[str, object] = {}  # "addr": int | None, "page": the mapping (kept alive)


def stop_hook_code(stop_addr: int) -> bytes:
    """The callback's machine code for a `uc_emu_stop` at `stop_addr` (see the docstring)."""
    return _HEAD + stop_addr.to_bytes(8, "little") + _TAIL


def uc_emu_stop_address() -> int:
    return ctypes.cast(_uclib.uc_emu_stop, ctypes.c_void_p).value or 0


def _libc_mprotect() -> Callable[[int, int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.mprotect
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def emit(
    code: bytes, mprotect: Callable[[int, int, int], int] | None = None
) -> tuple[int, mmap.mmap] | str:
    """Copy `code` into a fresh page and make it read+execute: (address, mapping), or why not."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return f"no System V x86-64 ABI here ({sys.platform}/{platform.machine()})"
    try:
        page = mmap.mmap(
            -1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=PROT_READ | PROT_WRITE
        )
    except (OSError, ValueError) as e:
        return f"mmap refused: {e}"
    page[: len(code)] = code
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    mprotect = mprotect or _libc_mprotect()
    if mprotect(addr, PAGE, PROT_READ | PROT_EXEC) != 0:
        return f"mprotect(PROT_EXEC) refused: errno {ctypes.get_errno()}"
    return addr, page


def stop_hook(mprotect: Callable[[int, int, int], int] | None = None) -> int | None:
    """Address of the shared native callback, emitted on first use; None (after one warning
    line on stderr) where it cannot exist, and the caller uses counted slices."""
    if "addr" not in _state:
        r = emit(stop_hook_code(uc_emu_stop_address()), mprotect)
        if isinstance(r, str):
            sys.stderr.write(
                f"xenconsole: warning: native slice hook unavailable ({r}); "
                "guests run in counted slices (slower)\n"
            )
            _state["addr"] = None
        else:
            _state["addr"], _state["page"] = r
    return _state["addr"]  # type: ignore[return-value]


class SliceFlag:
    """One vCPU's flag, read by the native hook on the vCPU's thread and set by anyone."""

    __slots__ = ("buf", "ptr")

    def __init__(self) -> None:
        self.buf = (ctypes.c_uint8 * 2)()
        self.ptr = ctypes.addressof(self.buf)

    @property
    def kick(self) -> bool:
        return bool(self.buf[FLAG_KICK])

    @kick.setter
    def kick(self, value: bool) -> None:
        self.buf[FLAG_KICK] = 1 if value else 0

    @property
    def stopped(self) -> bool:
        """The native hook ended the run (reset by `take_stopped`)."""
        return bool(self.buf[FLAG_STOPPED])

    def take_stopped(self) -> bool:
        s = bool(self.buf[FLAG_STOPPED])
        self.buf[FLAG_STOPPED] = 0
        return s


def install(uc: Uc, flag: SliceFlag, addr: int | None = None) -> bool:
    """Add the native block hook to `uc` for `flag` (before any code is translated). False
    if there is no native hook: the caller must bound its slices with `count=`."""
    addr = stop_hook() if addr is None else addr
    if addr is None:
        return False
    h = ctypes.c_size_t()
    err = _uclib.uc_hook_add(
        uc._uch,
        ctypes.byref(h),
        UC_HOOK_BLOCK,
        ctypes.c_void_p(addr),
        ctypes.c_void_p(flag.ptr),
        1,
        0,
    )
    if err != 0:
        sys.stderr.write(f"xenconsole: warning: uc_hook_add(UC_HOOK_BLOCK) failed: {err}\n")
        return False
    return True
