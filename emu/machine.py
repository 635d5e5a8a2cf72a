"""The machine: one emulated x86-64 Xen host, declared in full.

`Machine(host)` carries every subsystem as a typed field set in `__init__` (see the class
docstring): memory (RAM, frame table, M2P, heap), the hypervisor console, the perf counters,
the access record and, with `guests=True` (the default), the vCPU scheduler and the HVM side
that builds, runs and crashes guests. `Machine(host, guests=False)` is the memory model
alone: domains get memory and P2Ms but no vCPUs on Unicorn and no shadow paging, so a
domain's frames are exactly what the memory model gives it.

`machine.quiesce(dom)` is the one way to hold vCPUs still (a context manager; with no
guests there is nothing to hold).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from emu import domctl
from emu.access.record import AccessRecord
from emu.console import HypervisorConsole
from emu.cpu.sched import Scheduler
from emu.domain import Domain
from emu.e820 import address_space, hole_frames, usable_pages
from emu.host import DomainSpec, HostConfig
from emu.hvm import HVM
from emu.mm.memory import set_target as _set_target
from emu.mm.p2m import new_m2p
from emu.mm.page import PAGE_SHIFT, pages_for_bytes
from emu.mm.page_alloc import Heap
from emu.mm.page_info import PAGE_INFO_BYTES, FrameTable, PGC_xen_heap
from emu.mm.ram import MachineRAM
from emu.perfc import PerfCounters, xen_perf_counters
from emu.pv.domain import PV
from emu.pv.domain import attach as attach_pv
from emu.shadow.common import attach_shadow_hooks

# Xen's own frames, never handed to the heap: the low 1 MiB (BIOS, real-mode trampoline,
# legacy hole) and the Xen image at 2 MiB. The boot allocator also takes the frame table and
# the M2P table from the top of RAM. All of them carry PGC_xen_heap in this model so that the
# audit can classify every frame.
LOW_MEM_FRAMES = 0x100
XEN_IMAGE_START = 0x200
XEN_IMAGE_FRAMES = 0x400  # 4 MiB


class Hooks:
    """Callbacks run on domain lifecycle events, in list order.

    The machine registers its own subsystems' hooks in `Machine.__init__` (HVM first, so a
    dying domain's vCPUs stop before its shadow pool is torn down); a plugin may add more.
    """

    def __init__(self) -> None:
        self.domain_created: list[Callable[[Domain], None]] = []
        self.domain_destroying: list[Callable[[Domain], None]] = []
        self.p2m_removing: list[Callable[[Domain, np.ndarray], None]] = []
        # fn(machine, spec) raising ValueError(message) refuses an `xl create`.
        self.domain_validate: list[Callable[[Machine, DomainSpec], None]] = []


class Machine:
    """One emulated x86-64 Xen host.

    Fields (all set by `__init__`; none is added later):

    host          the host's shape (HostConfig: memory, CPUs, dom0_mem)
    console       the hypervisor console: printk, the ring, input switching
    ram           machine RAM (MachineRAM), shared with every vCPU's Unicorn
    frames        the frame table (FrameTable: count_info, type_info, owner per frame)
    m2p           mfn -> gfn (numpy uint64)
    heap          the buddy allocator (Heap)
    perfc         Xen's performance counters (key `p`), per pCPU
    access        the per-frame guest access record (keys `U`, `Z`), one slot per frame
    sched         the vCPU scheduler (pCPU threads), or None without guests
    hvm           the machine-wide HVM state (guest entry frames, crash handling), or None
    pv            the machine-wide side of 64-bit PV guests (emu/pv/), or None
    domains       domid -> Domain; `lock` guards their lifecycle (taken before the heap's)
    hooks         domain lifecycle callbacks (Hooks)
    reboot_hooks  fn() called when key `R` asks whoever runs the machine for a reboot
    shadow_audit_enable  Xen's shadow_audit_enable (key `O`): audit shadows after each fault
    """

    debug_build = True

    def __init__(self, host: HostConfig, guests: bool = True) -> None:
        host.validate()
        self.host: HostConfig = host
        self.console = HypervisorConsole(nr_cpus=host.cpus, debug_build=self.debug_build)
        self._t0 = time.monotonic_ns()
        self.booted = False
        self.domains: dict[int, Domain] = {}
        self.reboot_hooks: list[Callable[[], None]] = []
        self.shadow_audit_enable: bool = False
        self.hooks: Hooks = Hooks()
        self.lock = threading.RLock()  # domain lifecycle; taken before the heap lock
        self.next_domid = 1
        # Memory: RAM, frame table, M2P, heap.
        self.ram: MachineRAM = MachineRAM(address_space(host.memory))  # holes: emu/e820.py
        nr = self.ram.nr_frames
        self.frames: FrameTable = FrameTable(nr)
        self.m2p: np.ndarray = new_m2p(nr)
        self.heap: Heap = Heap(self.frames, self.ram)
        self.heap.domain_lookup = self.domains.get
        self.xen_ranges: list[tuple[int, int, str]] = []
        self.idle_pt_maddr = XEN_IMAGE_START << PAGE_SHIFT  # the idle vCPU's CR3 (key `d`)
        self._setup_memory()
        self.perfc: PerfCounters = xen_perf_counters(host.cpus)
        self.access: AccessRecord = AccessRecord(nr)
        # Guests: vCPUs on Unicorn, run by the scheduler, under shadow paging.
        self.sched: Scheduler | None = None
        self.hvm: HVM | None = None
        self.pv: PV | None = None
        if guests:
            self.sched = Scheduler(self)
            self.hvm = HVM(self)
            self.hvm.attach()
            self.pv = PV(self)
            attach_pv(self.pv)
        attach_shadow_hooks(self)

    def quiesce(self, dom: Domain | None = None) -> AbstractContextManager[None]:
        """`with machine.quiesce(dom):` no vCPU of `dom` (of any domain for None) is inside
        `emu_start` during the block. Works from any thread, nests, and holds nothing when
        the machine runs no guests."""
        if self.sched is None:
            return contextlib.nullcontext()
        return self.sched.quiesce(dom)

    # ---- memory ---------------------------------------------------------------------

    def _setup_memory(self) -> None:
        nr = self.ram.nr_frames
        ft_pages = pages_for_bytes(nr * PAGE_INFO_BYTES)
        m2p_pages = pages_for_bytes(nr * 8)
        top = nr - ft_pages - m2p_pages
        hole = hole_frames(self.host.memory)
        self.xen_ranges = [
            (0, LOW_MEM_FRAMES, "low memory"),
            (XEN_IMAGE_START, XEN_IMAGE_START + XEN_IMAGE_FRAMES, "Xen image"),
            *([(hole[0], hole[1], "32-bit hole")] if hole else []),
            (top, top + ft_pages, "frame table"),
            (top + ft_pages, nr, "M2P table"),
        ]
        for s, e, _ in self.xen_ranges:
            self.frames.count_info[s:e] = PGC_xen_heap
        # end_boot_allocator(): everything else goes to the buddy allocator.
        self.heap.init_heap_pages(LOW_MEM_FRAMES, XEN_IMAGE_START - LOW_MEM_FRAMES)
        start = XEN_IMAGE_START + XEN_IMAGE_FRAMES
        if hole:
            self.heap.init_heap_pages(start, hole[0] - start)
            start = hole[1]
        self.heap.init_heap_pages(start, top - start)
        # The console ring comes from the Xen heap (console_init_ring()).
        order = max(0, (pages_for_bytes(self.console.ring.size) - 1).bit_length())
        self.conring_mfn = self.heap.alloc_xenheap_pages(order)
        self.conring_order = order

    def e820_usable_pages(self) -> int:
        """RAM pages in the e820 map (emu/e820.py)."""
        return usable_pages(self.host.memory)

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

    # ---- time -----------------------------------------------------------------

    def now(self) -> int:
        """NOW(): nanoseconds since the machine powered on."""
        return time.monotonic_ns() - self._t0

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
        """Stop everything the machine runs (vCPU threads, the idle scrubber) and give back
        what it holds at once (key `R`, server stop): every vCPU's Unicorn instance, and the
        RAM's pages to the OS. The Machine object itself may live on until the collector
        finds its cycles; it then holds no guest memory. Safe to call twice."""
        if self.heap.scrubber is not None:
            self.heap.scrubber.stop()
        if self.sched is not None:
            if not self.sched.stop():
                return  # a pCPU thread did not stop: its Uc may still run over this RAM
            self.sched.forget_all()
        with self.lock:
            for dom in self.domain_list():
                domctl.release_vcpus(dom)
        self.ram.scrub(0, self.ram.nr_frames)  # reads as zeros from now on
