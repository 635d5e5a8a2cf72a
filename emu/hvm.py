"""HVM guests on the machine: the subsystem that wires vCPUs, the scheduler and guests in.

`machine.hvm` (an `HVM`, built by `Machine(host, guests=True)` with `machine.sched`)
registers the domain hooks: a created domU gets its guest built (emu/domain_build.py),
shadow paging enabled, one Unicorn vCPU per vCPU entered through Xen's trampoline, and is
scheduled; a destroyed one is stopped first (before the shadow pool is torn down).

Xen's own frames for guest entry (one set per machine, from the Xen heap, never mapped for
the guest): a page holding the GDT (ring-3 descriptors), the `iretq` and its frame, and the
three tables that map it at XEN_VA, supervisor-only and read-only. The L4 slot is put in a
shadow L4 only while Xen itself needs it (the entry trampoline; an implicit GDT read by a
guest `iretq`, for one single-stepped instruction), so shadows never carry it otherwise.

A crash (invalid opcode with no handler, shadow fault beyond repair, access outside the
guest's memory) prints Xen's messages and shuts the domain down with SHUTDOWN_crash; a
triple fault shuts it down with HVM_PARAM_TRIPLE_FAULT_REASON (SHUTDOWN_reboot), as Xen
does. The toolstack then acts as the config says (emu/shutdown.py: xl's defaults destroy
on crash, restart on reboot); a destroyed domain's frames return to the heap while other
domains run on.
"""

from __future__ import annotations

import struct
import threading
import weakref

from emu.cpu import vcpu as V
from emu.cpu.regdump import show_guest_execution_state
from emu.domain import (
    HVM_PARAM_TRIPLE_FAULT_REASON,
    HVMDomain,
    SHUTDOWN_crash,
    SHUTDOWN_poweroff,
    SHUTDOWN_reboot,
    SHUTDOWN_suspend,
)
from emu.mm.page import _PAGE_ACCESSED, _PAGE_PRESENT, PAGE_SHIFT, table_offset

XEN_ENTRY_PAGES = 4  # XenPages: the GDT/trampoline page and its L3, L2, L1
SHUTDOWN_LETTER = {SHUTDOWN_poweroff: "-", SHUTDOWN_reboot: "r", SHUTDOWN_suspend: "s"}
SHUTDOWN_LETTER[SHUTDOWN_crash] = "c"


class XenPages:
    """The Xen frames every vCPU enters the guest through (see the module docstring)."""

    def __init__(self, machine) -> None:
        heap = machine.heap
        mfns = [heap.alloc_xenheap_pages(0) for _ in range(XEN_ENTRY_PAGES)]
        if any(m is None for m in mfns):
            raise RuntimeError("no Xen heap pages for the guest entry trampoline")
        self.page, l1, l2, l3 = mfns
        self.mfns = tuple(mfns)
        ram = machine.ram
        for mfn in mfns:
            ram.page(mfn)[:] = 0
        va = V.XEN_VA
        pa = _PAGE_PRESENT | _PAGE_ACCESSED  # no RW, no US: Xen reads them, nobody writes
        ram.page64(l3)[table_offset(va, 3)] = (l2 << PAGE_SHIFT) | pa
        ram.page64(l2)[table_offset(va, 2)] = (l1 << PAGE_SHIFT) | pa
        ram.page64(l1)[table_offset(va, 1)] = (self.page << PAGE_SHIFT) | pa
        self.xen_l4e = (l3 << PAGE_SHIFT) | pa
        gdt = [
            0,
            0x00209B0000000000,  # 0x08 ring-0 code64 (accessed: the CPU never writes it)
            0x0000930000000000,  # 0x10 ring-0 data
            0x0000F30000000000,  # 0x18 ring-3 data  (selector 0x1b)
            0x0020FB0000000000,  # 0x20 ring-3 code64 (selector 0x23)
        ]
        base = self.page << 12
        ram.write(base + V.GDT_OFF, struct.pack("<5Q", *gdt))
        ram.write(base + V.TRAMP_OFF, b"\x48\xcf")  # iretq
        frame = (V.KERNEL_ENTRY, V.SEL_UCODE, 0x202, 0, V.SEL_UDATA)
        ram.write(base + V.FRAME_OFF, struct.pack("<5Q", *frame))

    def snapshot(self, machine) -> bytes:
        return b"".join(machine.ram.read(m << 12, 4096) for m in self.mfns)


class HVM:
    """`machine.hvm`: the machine-wide side of HVM guests."""

    def __init__(self, machine) -> None:
        self.machine = machine
        self._xen: XenPages | None = None
        self.lock = threading.RLock()
        self.crash_counts: dict[str, int] = {}  # by cause: triple, shadow, unmapped, internal

    def attach(self) -> None:
        """Take the scheduler's outcomes and the domain lifecycle hooks (Machine.__init__)."""
        m = self.machine
        m.sched.on_crash = self.crash
        m.sched.on_shutdown = self.shutdown
        m.hooks.domain_created.append(self.domain_created)
        m.hooks.domain_destroying.append(self.domain_destroying)

    @property
    def xen(self) -> XenPages:
        if self._xen is None:
            self._xen = XenPages(self.machine)
        return self._xen

    @property
    def xen_l4e(self) -> int:
        return self.xen.xen_l4e

    # ---- domain hooks --------------------------------------------------------------------

    def domain_created(self, dom) -> None:
        if dom.domid == 0 or getattr(dom.spec, "type", "hvm") == "pv":
            return  # PV domains: emu/pv/
        from emu.domain_build import build_guest
        from emu.shadow.common import shadow_enable
        from emu.workload import check_workload

        m = self.machine
        w = check_workload(dom.spec)
        layout = build_guest(m, dom, w)
        dom.hvm = HVMDomain(m, dom, w, layout)
        shadow_enable(m, dom)
        old = list(dom.vcpus)
        vcpus = []
        for i in range(len(old) or 1):
            proc = old[i].processor if i < len(old) else i
            vcpus.append(V.VCPU(m, dom, i, processor=proc % m.sched.nr_cpus))
        dom.vcpus = vcpus
        xen_l4e = self.xen_l4e
        for v in vcpus:
            v.load_cr3(layout.pt_start << 12)
            v.enter(xen_l4e, v.vcpu_id, 0)
        for v in vcpus:
            m.sched.add_vcpu(v)

    def domain_destroying(self, dom) -> None:
        if dom.domid == 0:
            return
        self.machine.sched.remove_domain(dom)
        hvm = dom.hvm
        if hvm is not None:
            for fn in list(hvm.console.on_close):
                try:
                    fn()
                except Exception:  # a client gone away must not stop the destroy
                    pass
        for v in dom.vcpus:
            if isinstance(v, V.VCPU):
                v.blocked, v.running = True, False

    # ---- crash and shutdown --------------------------------------------------------------

    def crash(self, vcpu, how: str, text: str, cpu: int) -> None:
        """domain_crash() / hvm_triple_fault() for the domain of `vcpu`; the toolstack then
        acts on the reason (emu/shutdown.py)."""
        dom = vcpu.domain  # one read: a strong reference, or the released vCPU's proxy
        if isinstance(dom, weakref.ProxyType):
            return  # destroyed meanwhile (emu/cpu/vcpu.py VCPU.release)
        m = self.machine
        reason = SHUTDOWN_crash
        # The machine lock first (the order every path takes): an `xl destroy` on another
        # thread cannot release this vCPU's Uc while its registers are printed.
        with m.lock, m.console.lock:
            if dom.shutdown_code is not None or dom.is_dying:
                return  # __domain_crash(): already shutting down, print nothing
            self.crash_counts[how] = self.crash_counts.get(how, 0) + 1
            p = m.console.printk
            if how == "triple":
                # hvm_triple_fault() (xen/arch/x86/hvm/hvm.c:1754-1765): the reason is
                # HVM_PARAM_TRIPLE_FAULT_REASON, SHUTDOWN_reboot unless the toolstack set it.
                reason = dom.hvm.params[HVM_PARAM_TRIPLE_FAULT_REASON]
                p(f"{vcpu.name} Triple fault - invoking HVM shutdown action {reason}\n")
                p(f"*** Dumping Dom{dom.domid} vcpu#{vcpu.vcpu_id} state: ***\n")
            else:
                p(f"{vcpu.name} {text}\n")
                p(f"Domain {dom.domid} (vcpu#{vcpu.vcpu_id}) crashed on cpu#{cpu}:\n")
            show_guest_execution_state(m, lambda s: p(s + "\n"), vcpu, cpu)
            dom.hvm.crashed_on = (vcpu.vcpu_id, cpu)
        self._shutdown(dom, reason)

    def shutdown(self, vcpu, reason: int) -> None:
        dom = vcpu.domain
        if not isinstance(dom, weakref.ProxyType):  # else destroyed meanwhile
            self._shutdown(dom, reason)

    def _shutdown(self, dom, reason: int) -> None:
        """domain_shutdown(), then the domain's xl daemon acts on the reason (on_poweroff,
        on_reboot, on_crash; emu/shutdown.py)."""
        from emu.shutdown import domain_shutdown, handle_domain_death

        if domain_shutdown(self.machine, dom, reason):
            handle_domain_death(self.machine, dom, reason)
