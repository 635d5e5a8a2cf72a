"""Xen's HVM guest ABI: CPUID leaves, the hypercall-page MSR, and `vmcall` hypercalls.

An HVM guest finds Xen through CPUID leaves 0x40000000-0x40000005 (xen/arch/x86/cpuid.c:38
cpuid_hypervisor_leaves: leaf 0 the signature "XenVMMXenVMM", leaf 2 the hypercall-page MSR
0x40000000), writes that MSR with the guest-physical address of a page (msr.c:61
guest_wrmsr_xen), and Xen fills the page (domain.c:192 init_hypercall_page: 0xcc, then
vmx.c:1568 vmx_init_hypercall_page: 32 bytes per hypercall, `mov eax, nr; vmcall; ret`,
`ud2` for iret). The guest calls `HYPERCALL_PAGE + 32 * nr`.

`vmcall` is the hypercall (a VM exit on VT-x). Unicorn has no VMX: the instruction raises
#UD, whose hook (emu/cpu/vcpu.py `_on_invalid`) finds the bytes 0f 01 c1 at RIP and calls
`vmcall()` here. hvm_hypercall() (xen/arch/x86/hvm/hypercall.c:104): from a guest CPL above 0
the answer is -EPERM; else rax = number, rdi rsi rdx r10 r8 the arguments, the result in
rax, RIP advanced by 3 -- unless the call was preempted (a continuation: the arguments in
the registers advance and RIP stays on the `vmcall`, which runs again on the next slice).

The hypercalls of hypercall-defs.c's hvm64 column this guest ABI implements:
    memory_op (12)       decrease_reservation, populate_physmap, current/maximum_reservation,
                         add_to_physmap (XENMAPSPACE_shared_info)   (emu/cpu/hvm_memory.py)
    set_timer_op (15), xen_version (17: XENVER_version), console_io (18: write, read),
    sched_op (29: yield, block, shutdown), event_channel_op (32: send),
    hvm_op (34: get_param, set_evtchn_upcall_vector)
Any other number, or a sub-op not listed, returns -ENOSYS.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from emu.cpu import hvm_memory
from emu.cpu.hvm_copy import (
    ARG_REGS,
    DOMID_SELF,
    EFAULT,
    EINVAL,
    ENOENT,
    ENOSYS,
    EPERM,
    ESRCH,
    continuation,
    read,
    write,
)
from emu.domain import CONSOLE_LINE, SHUTDOWN_crash
from emu.mm import guestmem
from emu.mm.page_info import PGC_shadowed_pt
from emu.version import XEN_MAJOR, XEN_MINOR

HC_memory_op, HC_set_timer_op, HC_xen_version, HC_console_io = 12, 15, 17, 18
HC_iret, HC_sched_op, HC_event_channel_op, HC_hvm_op = 23, 29, 32, 34
CONSOLEIO_write, CONSOLEIO_read = 0, 1
SCHEDOP_yield, SCHEDOP_block, SCHEDOP_shutdown = 0, 1, 2
EVTCHNOP_send = 4
HVMOP_set_param, HVMOP_get_param, HVMOP_set_evtchn_upcall_vector = 0, 1, 23
HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN = 1, 2
HVM_NR_PARAMS = 39  # public/hvm/params.h:294
# hvm.c:4411 hvm_allow_get_param(): what a guest may read of itself; the deprecated ones
# are -EINVAL, every other one -EPERM.
# (public/hvm/params.h numbers)
GUEST_READABLE_PARAMS = frozenset({0, 15, 37, 19, 34, 1, 2, 17, 18, 35, 36})
DEPRECATED_PARAMS = frozenset({4, 13, 20, 21, 22, 23, 24, 25, 26, 30})
CONSOLE_KBUF = 128  # guest_console_write()'s kbuf
VMCALL = b"\x0f\x01\xc1"

# ---- CPUID (xen/arch/x86/cpuid.c:38, public/arch-x86/cpuid.h) ------------------------------
CPUID_BASE = 0x40000000
XEN_CPUID_MAX_NUM_LEAVES = 5  # cpuid.h:120 (the default limit)
XEN_CPUID_SIGNATURE = (0x566E6558, 0x65584D4D, 0x4D4D566E)  # "XenV" "MMXe" "nVMM"
XEN_HVM_CPUID_IOMMU_MAPPINGS = 1 << 2
XEN_HVM_CPUID_VCPU_ID_PRESENT = 1 << 3
XEN_HVM_CPUID_DOMID_PRESENT = 1 << 4
XEN_HVM_CPUID_UPCALL_VECTOR = 1 << 6
HYPERCALL_MSR = 0x40000000  # leaf 2 ebx: the MSR base (no Viridian)


def cpuid_leaf(vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
    """guest_cpuid() for 0x40000000-0x400001ff (cpuid.c:235-243), None for other leaves
    (the CPU's own answer; see docs/differences.md)."""
    if not CPUID_BASE <= leaf <= CPUID_BASE + 0x1FF:
        return None
    idx = leaf - CPUID_BASE
    limit = XEN_CPUID_MAX_NUM_LEAVES
    a = b = c = d = 0
    if idx > limit:
        return (0, 0, 0, 0)
    if idx == 0:
        a = CPUID_BASE + limit
        b, c, d = XEN_CPUID_SIGNATURE
    elif idx == 1:
        a = (XEN_MAJOR << 16) | XEN_MINOR
    elif idx == 2:
        a, b = 1, HYPERCALL_MSR  # one hypercall page; the MSR that installs it
    elif idx == 4 and subleaf == 0:
        # No APIC register virtualisation on this host (no VT-x at all): cpuid.c:110-128.
        a = XEN_HVM_CPUID_IOMMU_MAPPINGS | XEN_HVM_CPUID_VCPU_ID_PRESENT
        a |= XEN_HVM_CPUID_DOMID_PRESENT | XEN_HVM_CPUID_UPCALL_VECTOR
        b, c = vcpu.vcpu_id, vcpu.domain.domid
    # idx 3 (time): vtsc 0, TSC mode default (0), tsc_khz and incarnation are not
    # modelled and read 0; idx 5 is PV-only.
    return (a, b, c, d)


def hypercall_page() -> bytes:
    """init_hypercall_page() for an HVM guest on VT-x (domain.c:192, vmx.c:1568)."""
    page = bytearray(b"\xcc" * 4096)
    for i in range(4096 // 32):
        off = i * 32
        if i == HC_iret:
            page[off : off + 2] = b"\x0f\x0b"  # ud2: HYPERVISOR_iret isn't supported
            continue
        page[off : off + 9] = b"\xb8" + struct.pack("<I", i) + VMCALL + b"\xc3"
    return bytes(page)


HYPERCALL_PAGE_BYTES = hypercall_page()


def wrmsr_xen(vcpu, msr: int, value: int) -> bool:
    """guest_wrmsr_xen() (msr.c:61): MSR 0x40000000 installs the hypercall page at the
    gfn in bits 63:12 (page index 0 only). False: #GP for the guest."""
    if msr != HYPERCALL_MSR:
        return False
    if value & 0xFFF:
        return False  # "wrmsr hypercall page index %#x unsupported" (a gdprintk: debug only)
    m, dom = vcpu.machine, vcpu.domain
    gfn = value >> 12
    if gfn >= len(dom.p2m):
        return False
    mfn = int(dom.p2m[gfn])
    if mfn >= m.ram.nr_frames:  # a hole: get_page_from_gfn() finds no page
        return False
    if int(m.frames.pi["count_info"][mfn]) & PGC_shadowed_pt:
        return False  # get_page_type(PGT_writable_page) fails on a page-table page
    m.ram.write(mfn << 12, HYPERCALL_PAGE_BYTES)
    return True


def rdmsr_xen(vcpu, msr: int) -> int | None:
    """guest_rdmsr_xen() (msr.c:45): the hypercall-page MSR reads as zero."""
    return 0 if msr == HYPERCALL_MSR else None


# ---- vmcall ---------------------------------------------------------------------------------


def vmcall(vcpu) -> None:
    """The VMCALL exit (hvm/hypercall.c:104 hvm_hypercall); RIP is on the `vmcall`."""
    uc = vcpu.uc
    rip = uc.reg_read(X.UC_X86_REG_RIP)
    nr = uc.reg_read(X.UC_X86_REG_RAX)
    vcpu.stats["hypercalls"] += 1
    if vcpu.vcpl:
        uc.reg_write(X.UC_X86_REG_RAX, -EPERM & 0xFFFFFFFFFFFFFFFF)  # hypercall.c:127-131
        uc.reg_write(X.UC_X86_REG_RIP, rip + len(VMCALL))
        return
    args = [uc.reg_read(r) for r in ARG_REGS]
    fn = HANDLERS.get(nr)
    ret = fn(vcpu, *args) if fn is not None else -ENOSYS
    # perfc_incra(hypercalls, eax) after every call, preempted ones too (hypercall.c:193)
    vcpu.machine.perfc.incra("hypercalls", nr, vcpu.processor)
    if ret is None:  # preempted: registers hold the continuation, RIP stays on the vmcall
        vcpu.stats["continuations"] += 1
        return
    uc.reg_write(X.UC_X86_REG_RAX, ret & 0xFFFFFFFFFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_RIP, rip + len(VMCALL))


# ---- console_io, sched_op, set_timer_op, xen_version ----------------------------------------


def console_io(vcpu, cmd: int, count: int, buf: int, *_) -> int | None:
    if cmd == CONSOLEIO_read:
        return 0
    if cmd != CONSOLEIO_write:
        return -ENOSYS
    return _console_write(vcpu, count & 0xFFFFFFFF, buf)


# is_console_printable(): isprint() plus \n and \t; everything else is stripped.
_UNPRINTABLE = bytes(c for c in range(256) if not (0x20 <= c < 0x7F or c in (0x09, 0x0A)))


def _console_write(vcpu, count: int, buf: int) -> int | None:
    """guest_console_write() (xen/drivers/char/console.c) for a domU: 127 bytes at a time
    through `kbuf`, non-printables stripped, output held in the domain's line buffer until a
    newline or until it would overflow, then one `(dN) ` line. Between chunks, when the
    scheduler wants the pCPU (hypercall_preempt_check()), the rest becomes a continuation,
    so a guest flooding this hypercall gives the pCPU up within one chunk."""
    con = vcpu.domain.hvm.console
    kcount = 0
    while count > 0:
        if kcount and vcpu.kicked:
            continuation(vcpu, CONSOLEIO_write, count, buf)
            return None
        kcount = min(count, CONSOLE_KBUF - 1)
        try:
            data = read(vcpu, buf, kcount)
        except guestmem.GuestMemError:
            return -EFAULT
        nl = data.find(b"\n")
        seg = data if nl < 0 else data[:nl]
        kcount = len(seg) + (nl >= 0)  # the bytes consumed, up to and including a newline
        out = seg.translate(None, _UNPRINTABLE)
        with con.lock:
            if nl < 0 and len(con.buf) + len(out) < CONSOLE_LINE - 1:
                con.buf += out  # buffer the output until a newline
                text = None
            else:
                text = (con.buf + out).decode("latin-1")
                con.buf.clear()
        if text is not None:
            con.emit_line(text)
        buf += kcount
        count -= kcount
    return 0


def sched_op(vcpu, cmd: int, arg: int, *_) -> int:
    if cmd == SCHEDOP_yield:
        vcpu.machine.perfc.incr("vcpu_yield", vcpu.processor)  # sched/core.c:1537
        vcpu.stop(("yield",))
        return 0
    if cmd == SCHEDOP_block:
        vcpu.vif = True  # SCHEDOP_block enables event delivery first
        vcpu.block()
        return 0
    if cmd == SCHEDOP_shutdown:
        try:
            raw = read(vcpu, arg, 4)
        except guestmem.GuestMemError:
            return -EFAULT
        reason = int.from_bytes(raw, "little")
        if reason > SHUTDOWN_crash:
            return -EINVAL
        vcpu.stop(("shutdown", reason))
        return 0
    return -ENOSYS


def set_timer_op(vcpu, deadline: int, *_) -> int:
    vcpu.wake_at = deadline or None
    return 0


def xen_version(vcpu, cmd: int, *_) -> int:
    return (XEN_MAJOR << 16) | XEN_MINOR if cmd == 0 else -ENOSYS


# ---- event_channel_op, hvm_op -------------------------------------------------------------


def event_channel_op(vcpu, cmd: int, arg: int, *_) -> int:
    evtchn = vcpu.domain.hvm.evtchn
    if cmd != EVTCHNOP_send or evtchn is None:
        return -ENOSYS
    try:
        (port,) = struct.unpack("<I", read(vcpu, arg, 4))
    except guestmem.GuestMemError:
        return -EFAULT
    return evtchn.send(port)


def hvm_op(vcpu, op: int, arg: int, *_) -> int:
    if op == HVMOP_get_param:
        return _get_param(vcpu, arg)
    if op == HVMOP_set_evtchn_upcall_vector:
        return _set_upcall_vector(vcpu, arg)
    return -ENOSYS


def _get_param(vcpu, arg: int) -> int:
    """hvmop_get_param() (hvm.c:4496) for the guest itself."""
    try:
        domid, index = struct.unpack("<HxxI", read(vcpu, arg, 8))
    except guestmem.GuestMemError:
        return -EFAULT
    if index >= HVM_NR_PARAMS:
        return -EINVAL
    dom = vcpu.domain
    if domid not in (DOMID_SELF, dom.domid):
        return -ESRCH if domid not in vcpu.machine.domains else -EPERM
    if index in DEPRECATED_PARAMS:
        return -EINVAL
    if index not in GUEST_READABLE_PARAMS:
        return -EPERM
    value = dom.hvm.params.get(index, 0)
    try:
        write(vcpu, arg + 8, struct.pack("<Q", value))
    except guestmem.GuestMemError:
        return -EFAULT
    return 0


def _set_upcall_vector(vcpu, arg: int) -> int:
    """hvmop_set_evtchn_upcall_vector() (hvm.c:4096)."""
    try:
        vid, vector = struct.unpack("<IB", read(vcpu, arg, 5))
    except guestmem.GuestMemError:
        return -EFAULT
    if vector < 0x10:
        return -EINVAL
    dom = vcpu.domain
    if vid >= len(dom.vcpus):
        return -ENOENT
    v = dom.vcpus[vid]
    first = dom.vcpus[0].upcall_vector
    if vector != first or (v.upcall_vector and vector != v.upcall_vector):
        # hvm.c:4123, a XENLOG_G_INFO line (guest_loglvl=all prints it)
        vcpu.machine.console.printk(f"{v.name}: upcall vector {vector:02x}\n", guest=True)
    v.upcall_vector = vector
    dom.hvm.assert_evtchn_irq(v)
    return 0


def _memory_op(vcpu, cmd: int, arg: int, *_) -> int | None:
    return hvm_memory.memory_op(vcpu, cmd, arg)


HANDLERS = {
    HC_memory_op: _memory_op,
    HC_set_timer_op: set_timer_op,
    HC_xen_version: xen_version,
    HC_console_io: console_io,
    HC_sched_op: sched_op,
    HC_event_channel_op: event_channel_op,
    HC_hvm_op: hvm_op,
}
