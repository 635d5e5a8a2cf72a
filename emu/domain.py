"""Domains (`struct domain`): id, name, page accounting, vCPUs.

This is the record the console needs; the memory model (page lists, P2M/M2P) extends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DOMID_UNLIMITED_MAX_PAGES = 4294967295


@dataclass
class VCPU:
    vcpu_id: int
    processor: int = 0
    blocked: bool = True
    running: bool = False
    cpu_time_ns: int = 0


@dataclass
class Domain:
    domid: int
    name: str
    tot_pages: int = 0
    max_pages: int = DOMID_UNLIMITED_MAX_PAGES
    vcpus: list[VCPU] = field(default_factory=list)
    pause_count: int = 0
    is_dying: int = 0
    shutdown_code: int | None = None  # 'c' crash, 'r' reboot, ...
    handle: str = "00000000-0000-0000-0000-000000000000"
    outstanding_pages: int = 0

    @property
    def is_privileged(self) -> bool:
        return self.domid == 0

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
