"""Domains (`struct domain`): id, name, page accounting, P2M, vCPU records, and the
per-domain state of the subsystems that run guests (`paging`, `hvm`: the guest's debug
console, `struct domain_console`, and its workload and crash record).

The page list is not stored: it is derived from the frame table's owner field
(`machine.frames.owned_by(domid)`), so it can never disagree with the frames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from emu.mm.page import INVALID_MFN

if TYPE_CHECKING:  # types only: these modules build on this one
    from emu.host import DomainSpec
    from emu.pv.domain import PVDomain
    from emu.shadow.common import ShadowDomain

DOMID_UNLIMITED_MAX_PAGES = 4294967295

# vm_assist values shown by `q` (PV dom0 and HVM domUs as a real Xen host's `q` shows them).
VM_ASSIST_PV = 0x2D
VM_ASSIST_HVM = 0x20
# SCHEDOP_shutdown reasons (public/sched.h).
SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3
HVM_PARAM_TRIPLE_FAULT_REASON = 31  # public/hvm/params.h:240
CONSOLE_LINE = 256  # struct domain_console buf[256]
XENLOG_G_DEBUG = 3  # XENLOG_GUEST XENLOG_DEBUG: the level of guest console lines
CONSOLE_HISTORY = 1000  # lines kept for `xl console`


@dataclass
class VcpuRecord:
    """What the hypervisor records about a vCPU (`struct vcpu`'s scheduling fields).

    dom0's vCPUs are only this (dom0 is the console shell, not a guest on Unicorn); a
    guest's vCPUs are emu/cpu/vcpu.py's `VCPU`, which adds the CPU itself.
    """

    vcpu_id: int
    processor: int = 0
    blocked: bool = True
    running: bool = False
    cpu_time_ns: int = 0
    pause_count: int = 0
    poll_evtchn: int = 0
    down: bool = False  # offline (hvm_vcpu_down)
    runstate_since: int = field(default_factory=time.monotonic_ns)

    def flush_tlb(self) -> None:
        """A vCPU that is not on Unicorn has no TLB: nothing to flush."""


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
        self.emit_line(text)

    def emit_line(self, text: str) -> None:
        """guest_printk(d, XENLOG_G_DEBUG "%s\n", ...) of one complete line (no newline)."""
        self.lines.append(text)
        self.machine.console.guest_printk(self.domid, text + "\n", XENLOG_G_DEBUG)
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
        # d->arch.hvm.params: hvm_domain_initialise() sets the triple-fault reason to
        # SHUTDOWN_reboot (xen/arch/x86/hvm/hvm.c:678).
        self.params: dict[int, int] = {HVM_PARAM_TRIPLE_FAULT_REASON: SHUTDOWN_reboot}


def empty_p2m() -> np.ndarray:
    return np.zeros(0, dtype=np.uint64)


@dataclass
class Domain:
    domid: int
    name: str
    tot_pages: int = 0
    max_pages: int = DOMID_UNLIMITED_MAX_PAGES
    vcpus: list[VcpuRecord] = field(default_factory=list)  # emu.cpu.vcpu.VCPU for guests
    pause_count: int = 0
    is_dying: int = 0  # DOMDYING_alive / dying / dead
    shutdown_code: int | str | None = None  # 'c' crash, 'r' reboot, ...
    handle: str = "00000000-0000-0000-0000-000000000000"
    outstanding_pages: int = 0
    # Memory model
    p2m: np.ndarray = field(default_factory=empty_p2m)  # gfn -> mfn (INVALID_MFN = hole)
    spec: DomainSpec | None = None  # the spec it was created from (None: dom0)
    paging: ShadowDomain | None = None  # shadow paging (emu/shadow/), once enabled
    hvm: HVMDomain | None = None  # HVM state (set by emu/hvm.py): console, crash record
    pv: PVDomain | None = None  # 64-bit PV state (set by emu/pv/domain.py), type="pv" only
    reserved_gfns: set[int] | np.ndarray = field(default_factory=set)  # never ballooned
    xenheap_pages: int = 0
    access_windows: int = 0  # keys `Z` so far (emu/access/scan.py reset_window)
    xenpage_mfns: list[int] = field(default_factory=list)  # d->xenpage_list
    extra_pages: int = 0
    target_pages: int = 0  # balloon target (xenstore memory/target)
    static_max_kb: int = 0  # xenstore memory/static-max
    vm_assist: int = VM_ASSIST_HVM
    refcnt: int = 3

    @property
    def is_privileged(self) -> bool:
        return self.domid == 0

    @property
    def is_hvm(self) -> bool:
        """dom0 and `type="pv"` domUs are PV; other domUs are (shadow-mode) HVM guests."""
        return self.domid != 0 and getattr(self.spec, "type", "hvm") != "pv"

    def cpu_time(self) -> float:
        """Seconds of CPU time used by all vCPUs (`xl list` Time(s))."""
        return sum(v.cpu_time_ns for v in self.vcpus) / 1e9

    def online_vcpus(self) -> list:
        """The vCPUs not down (VPF_down): getdomaininfo()'s nr_online_vcpus."""
        return [v for v in self.vcpus if not getattr(v, "down", False)]

    def state_chars(self) -> str:
        """`xl list` State column (tools/xl/xl_info.c:500-513) from getdomaininfo()'s flags
        (xen/common/domctl.c:54-92): running if an online vCPU runs, blocked if every
        online vCPU is blocked, shut down with the reason's letter, dying once dead."""
        online = self.online_vcpus()
        running = any(v.running for v in online)
        blocked = bool(online) and all(v.blocked for v in online)
        code = self.shutdown_code
        letter = code if isinstance(code, str) else "-" if code is None else "?"
        return "".join(
            [
                "r" if running else "-",
                "b" if blocked and not running else "-",
                "p" if self.pause_count else "-",
                "s" if code is not None else "-",
                letter,
                "d" if self.is_dying == 2 else "-",  # XEN_DOMINF_dying: DOMDYING_dead only
            ]
        )

    # ---- P2M questions (vectorised) -------------------------------------------------

    def populated_gfns(self) -> np.ndarray:
        return np.flatnonzero(self.p2m != INVALID_MFN)

    def nr_populated(self) -> int:
        return int(np.count_nonzero(self.p2m != INVALID_MFN))

    def gfn_to_mfn(self, gfn: int) -> int | None:
        if 0 <= gfn < len(self.p2m):
            mfn = self.p2m[gfn]
            if mfn != INVALID_MFN:
                return int(mfn)
        return None

    def reserved_array(self) -> np.ndarray:
        r = self.reserved_gfns
        if r is None:
            return np.zeros(0, dtype=np.int64)
        if isinstance(r, np.ndarray):
            return r.astype(np.int64, copy=False)
        return np.fromiter(r, dtype=np.int64, count=len(r))

    def ensure_p2m(self, nr_gfns: int) -> None:
        """Grow the P2M (new entries are holes)."""
        if nr_gfns > len(self.p2m):
            grown = np.full(nr_gfns, INVALID_MFN, dtype=np.uint64)
            grown[: len(self.p2m)] = self.p2m
            self.p2m = grown
