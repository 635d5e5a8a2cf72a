"""The machine: host shape, hypervisor console, domains. Memory and vCPUs hang off it."""

from __future__ import annotations

import time
from collections.abc import Callable

from emu.console import Console
from emu.host import HostConfig

XEN_VERSION = "4.22.0"
XEN_MAJOR, XEN_MINOR, XEN_EXTRA = 4, 22, ".0"
XEN_COMPILE_DATE = "Tue Nov 10 09:00:00 UTC 2026"
XEN_COMPILER = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
XEN_COMPILE_BY = "xenconsole"
XEN_COMPILE_DOMAIN = "emulated"
XEN_CHANGESET = "unavailable"
XEN_BUILD_ID = "5f3c2a9e1b7d4c6a8e0f2b4d6c8a0e1f3b5d7c9a"
XEN_COMMANDLINE = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all"


class Machine:
    """One emulated x86-64 Xen host."""

    debug_build = True

    def __init__(self, host: HostConfig) -> None:
        host.validate()
        self.host = host
        self.console = Console(nr_cpus=host.cpus, debug_build=self.debug_build)
        self._t0 = time.monotonic_ns()
        self.booted = False
        self.domains: dict[int, object] = {}
        self.reboot_hooks: list[Callable[[], None]] = []

    def now(self) -> int:
        """NOW(): nanoseconds since the machine powered on."""
        return time.monotonic_ns() - self._t0

    def build_dom0(self):
        """Create Domain-0 from `dom0_mem` (a generator: boot may pause inside it)."""
        from emu.domain import VCPU, Domain

        pages = self.host.dom0_mem >> 12
        dom0 = Domain(0, "Domain-0", tot_pages=pages, max_pages=pages)
        dom0.vcpus = [VCPU(i, processor=i, blocked=True) for i in range(self.host.cpus)]
        self.domains[0] = dom0
        self.console.printk(f"Dom0 has maximum {self.host.cpus} VCPUs\n")
        yield

    def total_pages(self) -> int:
        """Pages of RAM the hypervisor manages (`xl info` total_memory)."""
        return self.host.total_pages

    def free_pages(self) -> int:
        """Pages free in the heap (`xl info` free_memory)."""
        used = sum(getattr(d, "tot_pages", 0) for d in self.domains.values())
        return self.host.total_pages - used

    def request_reboot(self) -> None:
        """Key `R`: whoever runs the machine tears it down and boots a new one."""
        for hook in list(self.reboot_hooks):
            hook()

    def shutdown(self) -> None:
        """Stop everything the machine runs (vCPU threads); safe to call twice."""
