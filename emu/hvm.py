"""HVM guests on the machine: the subsystem that wires vCPUs, the scheduler and guests in.

`attach(machine)` (in `emu.machine.SUBSYSTEMS`) creates `machine.sched` and `machine.hvm`
and registers the domain hooks: a created domU gets its guest built (emu/domain_build.py),
shadow paging enabled, one Unicorn vCPU per vCPU entered through Xen's trampoline, and is
scheduled; a destroyed one is stopped first (before the shadow pool is torn down).

Xen's own frames for guest entry (one set per machine, from the Xen heap, never mapped for
the guest): a page holding the GDT (ring-3 descriptors), the `iretq` and its frame, and the
three tables that map it at XEN_VA, supervisor-only and read-only. The L4 slot is put in a
shadow L4 only while Xen itself needs it (the entry trampoline; an implicit GDT read by a
guest `iretq`, for one single-stepped instruction), so shadows never carry it otherwise.

A crash (triple fault, invalid opcode with no handler, shadow fault beyond repair, access
outside the guest's memory) prints Xen's messages, shuts the domain down with
SHUTDOWN_crash, and destroys it (xl's default `on_crash = "destroy"`): every frame returns to
the heap while other domains run on.
"""

from __future__ import annotations

import struct
import threading
from collections import deque

from emu import vcpu as V
from emu.regdump import show_guest_execution_state
from emu.sched import Scheduler

SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3
SHUTDOWN_LETTER = {SHUTDOWN_poweroff: "-", SHUTDOWN_reboot: "r", SHUTDOWN_suspend: "s"}
SHUTDOWN_LETTER[SHUTDOWN_crash] = "c"
CONSOLE_LINE = 256  # struct domain_console buf[256]
CONSOLE_HISTORY = 1000  # lines kept for `xl console`
PTE_P, PTE_A = 0x1, 0x20


class GuestConsole:
    """hvm_print_line(): port 0xe9 bytes -> `(dN) line`, plus the lines `xl console` shows."""

    def __init__(self, machine, dom) -> None:
        self.machine = machine
        self.domid = dom.domid
        self.buf = bytearray()
        self.lines: deque[str] = deque(maxlen=CONSOLE_HISTORY)
        self.listeners: list = []  # fn(text) with each complete line (with "\n")
        self.on_close: list = []  # fn() when the domain goes away (`xl console` returns)
        self.lock = threading.Lock()

    def putc(self, c: int) -> None:
        if not (0x20 <= c < 0x7F or c in (0x0A, 0x09)):  # is_console_printable()
            return
        with self.lock:
            if c != 0x0A:
                self.buf.append(c)
            if len(self.buf) == CONSOLE_LINE - 1 or c == 0x0A:
                text = self.buf.decode("latin-1")
                self.buf.clear()
            else:
                return
        self.lines.append(text)
        self.machine.console.guest_printk(self.domid, text + "\n")
        for fn in list(self.listeners):
            try:
                fn(text + "\n")
            except Exception:
                self.listeners.remove(fn)


class HVMDomain:
    """Per-domain HVM state (d->arch.hvm): the debug console, crash bookkeeping."""

    def __init__(self, machine, dom, workload, layout) -> None:
        self.console = GuestConsole(machine, dom)
        self.workload = workload
        self.layout = layout
        self.crashed_on: tuple[int, int] | None = None  # (vcpu, pcpu)


class XenPages:
    """The Xen frames every vCPU enters the guest through (see the module docstring)."""

    def __init__(self, machine) -> None:
        heap = machine.heap
        mfns = [heap.alloc_xenheap_pages(0) for _ in range(4)]
        if any(m is None for m in mfns):
            raise RuntimeError("no Xen heap pages for the guest entry trampoline")
        self.page, l1, l2, l3 = mfns
        self.mfns = tuple(mfns)
        ram = machine.ram
        for mfn in mfns:
            ram.page(mfn)[:] = 0
        va = V.XEN_VA
        ram.page64(l3)[(va >> 30) & 511] = (l2 << 12) | PTE_P | PTE_A
        ram.page64(l2)[(va >> 21) & 511] = (l1 << 12) | PTE_P | PTE_A
        ram.page64(l1)[(va >> 12) & 511] = (self.page << 12) | PTE_P | PTE_A
        self.xen_l4e = (l3 << 12) | PTE_P | PTE_A  # no RW, no US: Xen reads it, nobody writes
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
        from emu.shadow import shadow_enable
        from emu.workload import check_workload

        m = self.machine
        w = check_workload(dom.spec)
        layout = build_guest(m, dom, w)
        dom.hvm = HVMDomain(m, dom, w, layout)
        shadow_enable(m, dom)
        old = list(dom.vcpus)
        vcpus = []
        for i in range(len(old) or 1):
            proc = getattr(old[i], "processor", i) if i < len(old) else i
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
        hvm = getattr(dom, "hvm", None)
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
        """domain_crash() / hvm_triple_fault() for the domain of `vcpu`, then destroy it."""
        dom = vcpu.domain
        m = self.machine
        with m.console.lock:
            if dom.shutdown_code is not None or dom.is_dying:
                return  # __domain_crash(): already shutting down, print nothing
            self.crash_counts[how] = self.crash_counts.get(how, 0) + 1
            p = m.console.printk
            if how == "triple":
                p(f"{vcpu.name} Triple fault - invoking HVM shutdown action {SHUTDOWN_crash}\n")
                p(f"*** Dumping Dom{dom.domid} vcpu#{vcpu.vcpu_id} state: ***\n")
            else:
                p(f"{vcpu.name} {text}\n")
                p(f"Domain {dom.domid} (vcpu#{vcpu.vcpu_id}) crashed on cpu#{cpu}:\n")
            show_guest_execution_state(m, lambda s: p(s + "\n"), vcpu, cpu)
            dom.hvm.crashed_on = (vcpu.vcpu_id, cpu)
        self._shutdown(dom, SHUTDOWN_crash)

    def shutdown(self, vcpu, reason: int) -> None:
        self._shutdown(vcpu.domain, reason)

    def _shutdown(self, dom, reason: int) -> None:
        m = self.machine
        with self.lock:
            if dom.shutdown_code is not None:
                return
            dom.shutdown_code = SHUTDOWN_LETTER.get(reason, "-")
        m.sched.requeue_domain(dom)  # drops nothing; the vCPUs are no longer runnable
        # libxl's reaper: on_poweroff / on_crash = "destroy" (xl's defaults).
        if m.domains.get(dom.domid) is dom:
            try:
                m.destroy_domain(dom)
            except Exception as e:  # already being destroyed by xl
                m.console.printk(f"d{dom.domid} destroy after shutdown failed: {e}\n")


def attach(machine) -> None:
    """Machine subsystem: scheduler, HVM state, domain hooks (CONTRACT.md)."""
    machine.sched = Scheduler(machine)
    machine.hvm = HVM(machine)
    machine.sched.on_crash = machine.hvm.crash
    machine.sched.on_shutdown = machine.hvm.shutdown
    hooks = machine.hooks
    hooks.domain_created.append(machine.hvm.domain_created)
    # First, so vCPUs are stopped before the shadow pool is torn down.
    hooks.domain_destroying.insert(0, machine.hvm.domain_destroying)
    validate = getattr(hooks, "domain_validate", None)
    if validate is not None:
        validate.append(_validate)


def _validate(machine, spec) -> None:
    from emu.workload import validate_workload

    err = validate_workload(spec)
    if err is not None:
        raise ValueError(err)
