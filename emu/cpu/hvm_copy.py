"""What every HVM hypercall handler uses: the argument registers, copies from and to the
guest (hvm_copy_{from,to}_guest_linear through its own tables), and the continuation.
(emu/cpu/hvm_hypercall.py dispatches; emu/cpu/hvm_memory.py is memory_op.)"""

from __future__ import annotations

from unicorn import x86_const as X

from emu.mm import guestmem
from emu.mm.page_info import PGC_shadowed_pt

EPERM, ENOENT, ESRCH, EFAULT, EINVAL, ENOSYS = 1, 2, 3, 14, 22, 38
DOMID_SELF = 0x7FF0

ARG_REGS = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_R10)
ARG_REGS += (X.UC_X86_REG_R8,)


def continuation(vcpu, *args: int) -> None:
    """hypercall_create_continuation() for an HVM guest: the argument registers get the
    remaining work; the caller returns None so RIP stays on the `vmcall` (the VMCALL exit
    does not advance it when hcall_preempted, vmx.c), and the slice ends."""
    uc = vcpu.uc
    for reg, value in zip(ARG_REGS, args, strict=False):
        uc.reg_write(reg, value & 0xFFFFFFFFFFFFFFFF)
    vcpu.stop(("slice",))


def read(vcpu, va: int, n: int) -> bytes:
    return guestmem.read(vcpu.machine, vcpu.domain, vcpu.guest_cr3, va, n)


def write(vcpu, va: int, data: bytes) -> None:
    ft_count = vcpu.machine.frames.pi["count_info"]
    guestmem.write(
        vcpu.machine,
        vcpu.domain,
        vcpu.guest_cr3,
        va,
        data,
        refuse=lambda mfn: bool(int(ft_count[mfn]) & PGC_shadowed_pt),
    )
