"""Domains (`struct domain`): id, name, page accounting, P2M, vCPU records.

The page list is not stored: it is derived from the frame table's owner field
(`machine.frames.owned_by(domid)`), so it can never disagree with the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DOMID_UNLIMITED_MAX_PAGES = 4294967295
INVALID_MFN = np.uint64(2**64 - 1)
INVALID_GFN = INVALID_MFN
INVALID_M2P_ENTRY = np.uint64(2**64 - 1)

# vm_assist values shown by `q` (PV dom0 as in xen.md's example; HVM domUs as observed).
VM_ASSIST_PV = 0x2D
VM_ASSIST_HVM = 0x20


@dataclass
class VCPU:
    vcpu_id: int
    processor: int = 0
    blocked: bool = True
    running: bool = False
    cpu_time_ns: int = 0
    pause_count: int = 0
    poll_evtchn: int = 0


def empty_p2m() -> np.ndarray:
    return np.zeros(0, dtype=np.uint64)


@dataclass
class Domain:
    domid: int
    name: str
    tot_pages: int = 0
    max_pages: int = DOMID_UNLIMITED_MAX_PAGES
    vcpus: list[Any] = field(default_factory=list)
    pause_count: int = 0
    is_dying: int = 0  # DOMDYING_alive / dying / dead
    shutdown_code: int | str | None = None  # 'c' crash, 'r' reboot, ...
    handle: str = "00000000-0000-0000-0000-000000000000"
    outstanding_pages: int = 0
    # Memory model
    p2m: np.ndarray = field(default_factory=empty_p2m)  # gfn -> mfn (INVALID_MFN = hole)
    spec: Any = None  # the DomainSpec it was created from
    paging: Any = None  # shadow state (emu.shadow) once enabled
    reserved_gfns: Any = field(default_factory=set)  # gfns ballooning must never take
    xenheap_pages: int = 0
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

    def state_chars(self) -> str:
        """`xl list` State column: r b p s <reason> d."""
        running = any(v.running for v in self.vcpus)
        blocked = bool(self.vcpus) and all(v.blocked for v in self.vcpus)
        return "".join(
            [
                "r" if running else "-",
                "b" if blocked and not running else "-",
                "p" if self.pause_count else "-",
                "s" if self.shutdown_code else "-",
                "c" if self.shutdown_code == "c" else "-",
                "d" if self.is_dying else "-",
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
