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

Building a guest follows libxl/libxc for an HVM domain: the toolstack reads the domain's
HVM context once (hvm_save(), which prints one `HVM d%dv%d save: <type>` / `HVM d%d save:
<type>` line per save handler at guest_loglvl=all, xen/arch/x86/hvm/save.c:242,256) and loads
the boot vCPU's context (hvm_load(), `HVM restore %pd: CPU 0`, save.c:361); the XenStore ring
page and its event channel become HVM_PARAM_STORE_PFN / HVM_PARAM_STORE_EVTCHN, libxl's keys
are written, and dom0's xenstored (emu/pv/xenstored.py) serves the ring. Event channels
reach the guest through the per-vCPU upcall vector (HVMOP_set_evtchn_upcall_vector),
injected through the guest's IDT when its virtual IF is set (emu/cpu/vcpu.py run()).

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
from emu.pv.event import EventChannels

HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN = 1, 2  # public/hvm/params.h:77-78

# hvm_sr_handlers[] in typecode order (public/arch-x86/hvm/save.h): (name, per vCPU).
# HEADER (1) has no handler; CPU_XSAVE (16) and CPU_MSR (20) are hvm.c:1584-1593's.
HVM_SAVE_HANDLERS = (
    ("CPU", True),
    ("PIC", False),
    ("IOAPIC", False),
    ("LAPIC", True),
    ("LAPIC_REGS", True),
    ("PCI_IRQ", False),
    ("ISA_IRQ", False),
    ("PCI_LINK", False),
    ("PIT", False),
    ("RTC", False),
    ("HPET", False),
    ("PMTIMER", False),
    ("MTRR", True),
    ("VIRIDIAN_DOMAIN", False),
    ("CPU_XSAVE", True),
    ("VIRIDIAN_VCPU", True),
    ("VMCE_VCPU", True),
    ("TSC_ADJUST", True),
    ("CPU_MSR", True),
)
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


class HVMEventChannels(EventChannels):
    """A domain's event channels (common code, emu/pv/event.py) with HVM's delivery: a
    pending, unmasked port raises the vCPU's upcall vector (hvm_assert_evtchn_irq())."""

    def set_pending(self, port: int) -> None:
        super().set_pending(port)
        ch = self.ports.get(port)
        vid = ch.vcpu if ch else 0
        if vid < len(self.dom.vcpus):
            self.dom.hvm.assert_evtchn_irq(self.dom.vcpus[vid])


class HVMGuest(HVMDomain):
    """d->arch.hvm of a guest this machine runs: HVMDomain plus its params and events."""

    def __init__(self, machine, dom, workload, layout) -> None:
        super().__init__(machine, dom, workload, layout)
        self.machine = machine
        # Weak: dom -> hvm -> dom would be a cycle only the collector breaks (the domain's
        # frames and vCPUs must go at destroy, tests/emu/test_teardown.py).
        self.dom = weakref.proxy(dom)
        self.evtchn = HVMEventChannels(machine, self.dom)
        # self.params (HVM_PARAM_*) comes from HVMDomain, with Xen's triple-fault reason.
        self.shinfo_gfn: int | None = None  # where the guest mapped shared_info
        self.xenstore = None  # its emu/pv/xenstored.py Connection

    def assert_evtchn_irq(self, v) -> None:
        """hvm_assert_evtchn_irq(): with an upcall vector and evtchn_upcall_pending set in
        the vCPU's vcpu_info, the vector goes pending and the vCPU is kicked awake."""
        if not isinstance(v, V.VCPU) or not v.upcall_vector:
            return
        si = self.dom.xenpage_mfns[0] << 12
        if v.vcpu_id >= 32 or not self.machine.ram.u8[si + v.vcpu_id * 64]:
            return
        v.upcall_irr = True
        if v.blocked and v.vif:
            self.machine.sched.wake(v)


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
        dom.hvm = HVMGuest(m, dom, w, layout)
        self._hvm_context_lines(dom)
        self._introduce(dom)
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

    def _hvm_context_lines(self, dom) -> None:
        """What libxc's vcpu_hvm() (tools/libs/guest/xg_dom_x86.c:1014-1138) makes Xen
        print: XEN_DOMCTL_gethvmcontext runs hvm_save() (save.c:242 and :256, one line per
        handler, per vCPU where the handler is), then sethvmcontext loads the BSP's CPU
        record (save.c:361; libxl gives an HVM guest a device model, so no MTRR records)."""
        p = self.machine.console.printk
        n = len(dom.vcpus) or 1
        for name, per_vcpu in HVM_SAVE_HANDLERS:
            if per_vcpu:
                for i in range(n):
                    p(f"HVM d{dom.domid}v{i} save: {name}\n", guest=True)
            else:
                p(f"HVM d{dom.domid} save: {name}\n", guest=True)
        p(f"HVM restore d{dom.domid}: CPU 0\n", guest=True)

    def _introduce(self, dom) -> None:
        """The XenStore ring for an HVM guest: the page and an unbound port towards dom0
        (HVM_PARAM_STORE_PFN/EVTCHN), libxl's keys (libxl_dom.c:461-490), XS_INTRODUCE."""
        from emu.workload import STORE_GFN

        m = self.machine
        pv = getattr(m, "pv", None)
        if pv is None:
            return  # the memory model alone: no dom0 daemons
        hvm = dom.hvm
        port = hvm.evtchn.alloc_unbound(0)
        hvm.params[HVM_PARAM_STORE_PFN] = STORE_GFN
        hvm.params[HVM_PARAM_STORE_EVTCHN] = port
        keys = {
            "name": dom.name,
            "memory/static-max": str(dom.static_max_kb),
            "memory/target": str(dom.target_pages * 4),
            "domid": str(dom.domid),
            "store/port": str(port),
            "store/ring-ref": str(STORE_GFN),
        }
        for i in range(len(dom.vcpus) or 1):
            keys[f"cpu/{i}/availability"] = "online"
        mfn = int(dom.p2m[STORE_GFN])
        hvm.xenstore = pv.xenstore.introduce(m, dom, mfn, port, keys)
        hvm.xenstore.connect(hvm.evtchn)

    def domain_destroying(self, dom) -> None:
        if dom.domid == 0:
            return
        pv = getattr(self.machine, "pv", None)
        hvm = dom.hvm
        if isinstance(hvm, HVMGuest):
            if hvm.xenstore is not None and pv is not None:
                pv.xenstore.release(dom.domid)
            hvm.xenstore = None
            hvm.evtchn.ports.clear()  # a port's consumer (xenstored) holds the domain
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
