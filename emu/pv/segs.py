"""Loading CS as a far transfer does: the selector and its descriptor cache.

Xen enters and leaves a PV guest with `iretq`/`sysret`, which load CS from the descriptor,
so a 64-bit guest's compat-mode (32-bit) code and its 64-bit kernel switch modes there.
Unicorn's `reg_write(CS)` only sets the selector: the descriptor cache, and with it 64-bit
or 32-bit decoding, stays as it was. `load_cs` writes the cache in the saved CPU context
(qemu's CPUX86State: `hflags`, `hflags2`, then `segs[]`, each segment {selector, base,
limit, flags}; the offsets are found once by probing a context for a marker in FS_BASE) and
sets the mode bits as qemu's cpu_x86_load_seg_cache() does for CS.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from emu.pv import xen as XF
from emu.pv.guest import GuestFault

HF_CS32, HF_SS32, HF_LMA, HF_CS64 = 1 << 4, 1 << 5, 1 << 14, 1 << 15
DESC_L, DESC_B, DESC_G = 1 << 21, 1 << 22, 1 << 23
R_CS, SEG_SIZE = 1, 24


def _offsets() -> tuple[int, int]:
    u = Uc(UC_ARCH_X86, UC_MODE_64)
    u.reg_write(X.UC_X86_REG_FS_BASE, 0x5EED5EED5EED5EED)
    b = bytes(u.context_save())
    segs = b.find((0x5EED5EED5EED5EED).to_bytes(8, "little")) - 8 - 4 * SEG_SIZE
    hflags = struct.unpack_from("<I", b, segs - 8)[0]
    assert hflags & (HF_LMA | HF_CS64) == HF_LMA | HF_CS64, "unexpected Unicorn context layout"
    return segs - 8, segs + R_CS * SEG_SIZE


HFLAGS_OFF, CS_OFF = _offsets()


def descriptor(vcpu, sel: int) -> int | None:
    """The GDT descriptor for `sel`: Xen's reserved entries, else the guest's GDT frames."""
    if sel in XF.BOOT_GDT:
        return XF.BOOT_GDT[sel]
    if sel & 4 or (sel >> 3) >= vcpu.gdt_ents:
        return None
    from emu.pv import guest

    try:
        return struct.unpack("<Q", guest.read(vcpu, XF.gdt_va(vcpu.vcpu_id) + (sel & ~7), 8))[0]
    except GuestFault:
        return None


def load_cs(vcpu, sel: int) -> None:
    """CS := `sel` with its descriptor's cache and mode (a no-op for the current selector)."""
    if vcpu.rr(X.UC_X86_REG_CS) == sel:
        return
    vcpu.rw(X.UC_X86_REG_CS, sel)
    desc = descriptor(vcpu, sel)
    if desc is None:
        return
    e1, e2 = desc & 0xFFFFFFFF, desc >> 32
    base = (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000)
    limit = (e1 & 0xFFFF) | (e2 & 0x000F0000)
    if e2 & DESC_G:
        limit = (limit << 12) | 0xFFF
    uc = vcpu.uc
    from unicorn.unicorn_py3.unicorn import uclib

    ctx = uc.context_save()
    raw = ctx.context.value
    struct.pack_into(
        "<IIQII", (ctypes.c_char * SEG_SIZE).from_address(raw + CS_OFF), 0, sel, 0, base, limit, e2
    )
    hf = ctypes.c_uint32.from_address(raw + HFLAGS_OFF)
    if hf.value & HF_LMA and e2 & DESC_L:
        hf.value |= HF_CS32 | HF_SS32 | HF_CS64
    else:
        hf.value = (hf.value & ~(HF_CS32 | HF_CS64)) | (HF_CS32 if e2 & DESC_B else 0)
    uclib.uc_context_restore(uc._uch, ctx.context)
