"""`machine.pv`: the machine-wide side of 64-bit PV guests (d->arch.pv and the hooks).

`PV(machine).attach()` (Machine.__init__, with guests) hooks domain creation and
destruction: a domain whose spec has `type == "pv"` is built here instead of by emu/hvm.py,
and a PV vCPU's crash is reported here.
"""

from __future__ import annotations

import threading

from emu.pv.event import ConsoleIO, EventChannels, PVConsole
from emu.pv.xenstored import XenStore

SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3


def is_pv(dom) -> bool:
    return getattr(getattr(dom, "spec", None), "type", "hvm") == "pv"


class PVDomain:
    """d->arch.pv and friends for one PV domain."""

    def __init__(self, machine, dom) -> None:
        self.shared_info_mfn = dom.xenpage_mfns[0]
        self.evtchn = EventChannels(machine, dom)
        self.console_io = ConsoleIO(machine, dom.domid)
        self.area = None  # PerDomainArea
        self.console: PVConsole | None = None
        self.layout = None
        self.parms = None
        self.crashed_on: tuple[int, int] | None = None
        self.gnttab = None  # emu/pv/grant.py GrantTable
        self.xenstore = None  # emu/pv/xenstored.py Connection


class PV:
    """`machine.pv`: the machine-wide side of PV guests."""

    def __init__(self, machine) -> None:
        from emu.pv.mm import PVMM

        self.machine = machine
        self._xen = None
        self.dom0_gnttab = None  # dom0's grant table, made when a domU first looks at it
        self.mm = PVMM(machine, lambda dom: self.xen.l4_slots(dom.pv.area))
        self.xenstore = XenStore()
        self.xenstore.write("/local/domain/0/name", "Domain-0")
        self.xenstore.write("/local/domain/0/domid", "0")
        self.lock = threading.Lock()

    @property
    def xen(self):
        """Xen's frames for PV guests, made when the first PV domain is built (so a host
        without PV guests keeps its M2P as a plain array and its heap untouched)."""
        if self._xen is None:
            from emu.pv.xen import XenFrames

            with self.machine.heap.lock:  # no M2P update is lost while it moves into RAM
                self._xen = XenFrames(self.machine)
        return self._xen

    # ---- helpers for the other modules -------------------------------------------------------

    def current_vcpu(self, dom):
        me = threading.current_thread()
        for v in dom.vcpus:
            if getattr(v, "_thread", None) is me and v.running:
                return v
        return None

    def warn(self, vcpu, text: str) -> None:
        """gdprintk/gprintk: `(XEN) d1v0 text` (guest_loglvl=all shows warnings)."""
        self.machine.console.printk(f"{vcpu.name} {text}\n")

    def flush_domain_tlbs(self, dom) -> None:
        """Every vCPU of `dom` (none of them is inside Unicorn but the caller's own)."""
        for v in dom.vcpus:
            if hasattr(v, "flush_tlb"):
                v.flush_tlb()

    # ---- domain lifecycle ---------------------------------------------------------------------

    def domain_created(self, dom) -> None:
        if not is_pv(dom):
            return
        from emu.domctl import DomainError
        from emu.pv.build import BuildError, build_pv, read_kernel
        from emu.pv.grant import GrantTable
        from emu.pv.mm import LEVEL_TYPE
        from emu.pv.vcpu import PVVCPU
        from emu.pv.xen import PerDomainArea

        m = self.machine
        spec = dom.spec
        dom.pv = pv = PVDomain(m, dom)
        dom.vm_assist = 0
        try:
            blob = read_kernel(spec.kernel, dom.domid, spec.read_file)
            pv.area = PerDomainArea(m, self.xen, spec.vcpus)
            pv.gnttab = GrantTable(m, dom)
            pv.evtchn.max_port = getattr(spec, "max_event_channels", 1023)
            store = pv.evtchn.alloc_unbound(0)
            cons = pv.evtchn.alloc_unbound(0)
            lay, parms = build_pv(m, dom, blob, getattr(spec, "cmdline", "") or "", store, cons)
        except BuildError as e:
            raise DomainError(str(e)) from None
        pv.layout, pv.parms = lay, parms
        # xc_dom_gnttab_seed(): console (0) and xenstore (1) rings granted to dom0.
        pv.gnttab.seed_v1(0, 0, int(dom.p2m[lay.console_pfn]))
        pv.gnttab.seed_v1(1, 0, int(dom.p2m[lay.store_pfn]))
        pv.console = PVConsole(m, dom, int(dom.p2m[lay.console_pfn]), cons)
        pv.console.connect(pv.evtchn)
        # libxl's keys for the domain (libxl_dom.c:461-490, libxl__build_post), then
        # XS_INTRODUCE: xenstored binds the store port and serves the ring.
        store_mfn, cons_mfn = int(dom.p2m[lay.store_pfn]), int(dom.p2m[lay.console_pfn])
        keys = {
            "name": dom.name,  # libxl__domain_make()
            "memory/static-max": str(dom.static_max_kb),
            "memory/target": str(dom.target_pages * 4),
            "domid": str(dom.domid),
            "store/port": str(store),
            "store/ring-ref": str(store_mfn),
        }
        for i in range(spec.vcpus):
            keys[f"cpu/{i}/availability"] = "online"
        keys.update({"console/port": str(cons), "console/ring-ref": str(cons_mfn)})
        pv.xenstore = self.xenstore.introduce(m, dom, store_mfn, store, keys)
        pv.xenstore.connect(pv.evtchn)
        old = list(dom.vcpus)
        vcpus = []
        for i in range(len(old) or 1):
            proc = getattr(old[i], "processor", i) if i < len(old) else i
            vcpus.append(PVVCPU(m, dom, i, processor=proc % m.sched.nr_cpus))
        dom.vcpus = vcpus
        v0 = vcpus[0]
        # arch_set_info_guest(): the vCPU's CR3 holds its own reference on the L4.
        v0.guest_table = int(dom.p2m[lay.pt_pfn])
        if self.mm.get_page_and_type(v0.guest_table, LEVEL_TYPE[4], dom):
            raise DomainError(f"libxl: error: cannot create domain {dom.name}: bad CR3")
        vb = parms.virt_base
        v0.enter(
            pv.area,
            parms.virt_entry,
            vb + ((lay.bootstack_pfn + 1) << 12),
            vb + (lay.start_info_pfn << 12),
        )
        for v in vcpus:
            m.sched.add_vcpu(v)

    def domain_destroying(self, dom) -> None:
        pv = getattr(dom, "pv", None)
        if pv is None:
            return
        if pv.console is not None:
            pv.console.close()
        pv.evtchn.destroy()  # the FIFO ABI's page references (evtchn_fifo_destroy())
        for mfn in [f for f in self.mm.linear if self.mm.owner(f) == dom.domid]:
            del self.mm.linear[mfn]  # its tables go with it (linear_pt_count, mm.c:3129)
        self.xenstore.release(dom.domid)
        if pv.area is not None:
            pv.area.free()
            pv.area = None

    # ---- crash ----------------------------------------------------------------------------------

    def crash(self, vcpu, how: str, text: str, cpu: int) -> None:
        """domain_crash() for a PV vCPU: Xen's lines, then SHUTDOWN_crash (xl destroys)."""
        from emu.cpu.regdump import show_registers, xen_info_line
        from emu.pv.traps import upcall_mask

        dom = vcpu.domain
        m = self.machine
        with m.console.lock:
            if dom.shutdown_code is not None or dom.is_dying:
                return
            p = m.console.printk
            # how == "pv": Xen's own first line, if any (the asm paths' own line names Xen
            # text addresses this emulation does not have, so it is left out).
            if how != "pv":
                p(f"{vcpu.name} {text}\n")
            elif text:
                p(f"{text}\n")
            p(f"Domain {dom.domid} (vcpu#{vcpu.vcpu_id}) crashed on cpu#{cpu}:\n")
            out = lambda s: p(s + "\n")  # noqa: E731
            out(xen_info_line(m))
            out(f"CPU:    {cpu}")
            show_registers(out, vcpu.regs(), "pv guest", vcpu.name, em=upcall_mask(vcpu))
            dom.pv.crashed_on = (vcpu.vcpu_id, cpu)
        m.hvm._shutdown(dom, SHUTDOWN_crash)


XL_ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy")
XL_ACTIONS += ("coredump-restart", "soft-reset")


def validate(machine, spec) -> None:
    """Refuse, with one line, what xl refuses or what this host does not do for PV."""
    kind = getattr(spec, "type", "hvm")
    if kind not in ("pv", "hvm"):
        raise ValueError(f'type="{kind}": only "pv" (and the emulator\'s own "hvm") are run here')
    for key in ("on_poweroff", "on_crash", "on_reboot"):
        action = getattr(spec, key, "destroy")
        if action not in XL_ACTIONS:
            raise ValueError(f'Unknown {key} action "{action}" specified')
        if action != "destroy":
            raise ValueError(f'{key}="{action}": only "destroy" is implemented here')


def attach(pv: PV) -> None:
    """The domain hooks (after HVM's, so a dying domain's vCPUs are stopped first), the
    xl config check, and the crash path for PV vCPUs."""
    machine = pv.machine
    machine.hooks.domain_created.append(pv.domain_created)
    machine.hooks.domain_validate.append(validate)
    machine.hooks.domain_destroying.append(pv.domain_destroying)
    sched = machine.sched
    hvm_crash = sched.on_crash

    def on_crash(vcpu, how, text, cpu):
        if is_pv(vcpu.domain):
            pv.crash(vcpu, how, text, cpu)
        elif hvm_crash is not None:
            hvm_crash(vcpu, how, text, cpu)

    sched.on_crash = on_crash
