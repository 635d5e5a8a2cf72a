"""The machine: host shape, hypervisor console, RAM, frame table, heap, domains.

Subsystems built by other parts (vCPU scheduler, shadow paging, ...) attach themselves
through the module-level `SUBSYSTEMS` list, called at the end of `Machine.__init__`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from emu import domctl
from emu.console import Console
from emu.domain import Domain
from emu.host import DomainSpec, HostConfig
from emu.memory import set_target as _set_target
from emu.p2m import new_m2p
from emu.page_alloc import Heap, runs_of
from emu.page_info import PAGE_INFO_BYTES, FrameTable, PGC_xen_heap
from emu.ram import MachineRAM

XEN_VERSION = "4.22.0"
XEN_MAJOR, XEN_MINOR, XEN_EXTRA = 4, 22, ".0"
XEN_COMPILE_DATE = "Tue Nov 10 09:00:00 UTC 2026"
XEN_COMPILER = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
XEN_COMPILE_BY = "xenconsole"
XEN_COMPILE_DOMAIN = "emulated"
XEN_CHANGESET = "unavailable"
XEN_BUILD_ID = "5f3c2a9e1b7d4c6a8e0f2b4d6c8a0e1f3b5d7c9a"
XEN_COMMANDLINE = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all"

# Xen's own frames, never handed to the heap: the low 1 MiB (BIOS, real-mode trampoline,
# legacy hole) and the Xen image at 2 MiB. The boot allocator also takes the frame table and
# the M2P table from the top of RAM. All of them carry PGC_xen_heap in this model so that the
# audit can classify every frame.
LOW_MEM_FRAMES = 0x100
XEN_IMAGE_START = 0x200
XEN_IMAGE_FRAMES = 0x400  # 4 MiB

SUBSYSTEMS: list[Callable[[Machine], None]] = []


class Hooks:
    """Callbacks other subsystems register (CONTRACT.md)."""

    def __init__(self) -> None:
        self.domain_created: list[Callable[[Domain], None]] = []
        self.domain_destroying: list[Callable[[Domain], None]] = []
        self.p2m_removing: list[Callable[[Domain, np.ndarray], None]] = []
        # fn(machine, spec) raising ValueError(message) refuses an `xl create`.
        self.domain_validate: list[Callable[[Machine, DomainSpec], None]] = []


def pages_for_bytes(n: int) -> int:
    return (n + 4095) >> 12


class Machine:
    """One emulated x86-64 Xen host."""

    debug_build = True

    def __init__(self, host: HostConfig) -> None:
        host.validate()
        self.host = host
        self.console = Console(nr_cpus=host.cpus, debug_build=self.debug_build)
        self._t0 = time.monotonic_ns()
        self.booted = False
        self.domains: dict[int, Domain] = {}
        self.reboot_hooks: list[Callable[[], None]] = []
        self.hooks = Hooks()
        self.lock = threading.RLock()  # domain lifecycle; taken before the heap lock
        self.next_domid = 1
        # Memory: RAM, frame table, M2P, heap.
        self.ram = MachineRAM(host.memory)
        nr = self.ram.nr_frames
        self.frames = FrameTable(nr)
        self.m2p = new_m2p(nr)
        self.heap = Heap(self.frames, self.ram)
        self.heap.domain_lookup = self.domains.get
        self.xen_ranges: list[tuple[int, int, str]] = []
        self._setup_memory()
        for attach in SUBSYSTEMS:
            attach(self)

    # ---- memory ---------------------------------------------------------------------

    def _setup_memory(self) -> None:
        nr = self.ram.nr_frames
        ft_pages = pages_for_bytes(nr * PAGE_INFO_BYTES)
        m2p_pages = pages_for_bytes(nr * 8)
        top = nr - ft_pages - m2p_pages
        self.xen_ranges = [
            (0, LOW_MEM_FRAMES, "low memory"),
            (XEN_IMAGE_START, XEN_IMAGE_START + XEN_IMAGE_FRAMES, "Xen image"),
            (top, top + ft_pages, "frame table"),
            (top + ft_pages, nr, "M2P table"),
        ]
        for s, e, _ in self.xen_ranges:
            self.frames.count_info[s:e] = PGC_xen_heap
        # end_boot_allocator(): everything else goes to the buddy allocator.
        self.heap.init_heap_pages(LOW_MEM_FRAMES, XEN_IMAGE_START - LOW_MEM_FRAMES)
        start = XEN_IMAGE_START + XEN_IMAGE_FRAMES
        self.heap.init_heap_pages(start, top - start)
        # The console ring comes from the Xen heap (console_init_ring()).
        ring = getattr(self.console, "ring", None)
        size = getattr(ring, "size", 16 << 10)
        order = max(0, (pages_for_bytes(size) - 1).bit_length())
        self.conring_mfn = self.heap.alloc_xenheap_pages(order)
        self.conring_order = order

    def e820_usable_pages(self) -> int:
        """RAM pages in the e820 map: low memory below the 0x9fc00 hole, then 1 MiB up."""
        return (0x9FC00 >> 12) + self.ram.nr_frames - 0x100

    def total_pages(self) -> int:
        """Pages of RAM the hypervisor manages (`xl info` total_memory)."""
        return self.e820_usable_pages()

    def free_pages(self) -> int:
        """Pages free in the heap (`xl info` free_memory)."""
        return self.heap.total_avail_pages

    def xen_frames(self) -> int:
        """Frames Xen keeps for itself (reserved ranges, Xen-heap pages not shared)."""
        ci = self.frames.count_info
        mine = ((ci & np.uint64(PGC_xen_heap)) != 0) & (self.frames.v == 0)
        return int(np.count_nonzero(mine))

    def frame_table_bytes_per_frame(self) -> int:
        return self.frames.pi.itemsize

    # ---- time, boot -----------------------------------------------------------------

    def now(self) -> int:
        """NOW(): nanoseconds since the machine powered on."""
        return time.monotonic_ns() - self._t0

    def build_dom0(self) -> Iterator[None]:
        """Create Domain-0 from `dom0_mem` (a generator: boot may pause inside it)."""
        from emu.domain import VCPU

        pages = self.host.dom0_mem >> 12
        p = self.console.printk
        dom0 = domctl.build_dom0_memory(self, pages)
        dom0.vcpus = [VCPU(i, processor=i, blocked=True) for i in range(self.host.cpus)]
        runs = runs_of(dom0.p2m.astype(np.int64))
        s, e = max(runs, key=lambda r: r[1] - r[0])
        p(" Xen  kernel: 64-bit, lsb\n")
        p(" Dom0 kernel: 64-bit, PAE, lsb, paddr 0x1000000 -> 0x2a2c000\n")
        rest = pages - (e - s)
        more = f" ({rest} pages to be allocated)" if rest else ""
        p(f"PHYSICAL MEMORY ARRANGEMENT:\n Dom0 alloc.:   {s << 12:016x}->{e << 12:016x}{more}\n")
        yield
        p(f"Dom0 has maximum {self.host.cpus} VCPUs\n")
        yield

    def boot_sync(self) -> Machine:
        """Run the whole boot at once (tests, benchmarks: no console server)."""
        from emu.setup import boot

        for _ in boot(self):
            pass
        return self

    # ---- domains --------------------------------------------------------------------

    def create_domain(self, spec: DomainSpec, paused: bool = False) -> Domain:
        return domctl.create_domain(self, spec, paused)

    def destroy_domain(self, dom: Domain) -> None:
        domctl.destroy_domain(self, dom)

    def set_target(self, dom: Domain, pages: int) -> int:
        with self.lock:
            if self.domains.get(dom.domid) is not dom or dom.is_dying:
                return dom.tot_pages  # destroyed meanwhile (e.g. crashed): nothing to do
            return _set_target(self, dom, pages)

    def set_max_pages(self, dom: Domain, pages: int) -> None:
        domctl.set_max_pages(self, dom, pages)

    def find_domain(self, name: str) -> Domain | None:
        return next((d for d in self.domains.values() if d.name == name), None)

    def domain_list(self) -> list:
        """Every domain in id order; a snapshot (a vCPU thread may destroy one meanwhile)."""
        return sorted(self.domains.copy().values(), key=lambda d: d.domid)

    def start_config_domains(self, specs: list[DomainSpec]) -> list[str]:
        """The config's [[domain]] entries, each as `xl create` of that spec would."""
        errors = []
        for spec in specs:
            try:
                self.create_domain(spec)
            except domctl.DomainError as e:
                msg = f"{spec.name}: {e}"
                errors.append(msg)
                self.console.serial_write(f"xl create {msg}\r\n".encode())
        return errors

    def request_reboot(self) -> None:
        """Key `R`: whoever runs the machine tears it down and boots a new one."""
        for hook in list(self.reboot_hooks):
            hook()

    def shutdown(self) -> None:
        """Stop everything the machine runs (vCPU threads); safe to call twice."""
        sched = getattr(self, "sched", None)  # GUEST: stop the pCPU threads
        if sched is not None:
            sched.stop()


from emu.hvm import attach as _attach_hvm  # noqa: E402  (GUEST: vCPUs, scheduler, guests)

SUBSYSTEMS.append(_attach_hvm)

from emu.pv import attach as _attach_pv  # noqa: E402  (64-bit PV guests, after HVM's scheduler)

SUBSYSTEMS.append(_attach_pv)
