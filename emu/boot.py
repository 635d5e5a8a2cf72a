"""Booting the host (`__start_xen()` in xen/arch/x86/setup.c).

`boot(machine)` is a generator: each `yield` is a point where the boot pauses, so input typed
during boot reaches Xen (which owns the console until `console_endboot()`). `boot_sync(machine)`
runs it at once (tests, benchmarks: no console server).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from emu import domctl
from emu.banner import XEN_BANNER
from emu.console import loglvl_str
from emu.domain import VcpuRecord
from emu.machine import Machine
from emu.mm.page import PAGE_SHIFT
from emu.mm.page_alloc import runs_of
from emu.version import (
    XEN_BUILD_ID,
    XEN_CHANGESET,
    XEN_COMMANDLINE,
    XEN_COMPILE_BY,
    XEN_COMPILE_DATE,
    XEN_COMPILE_DOMAIN,
    XEN_COMPILER,
    XEN_VERSION,
)


def e820_map(memory: int) -> list[tuple[int, int, str]]:
    """A simple BIOS map: low memory, the legacy hole, then RAM up to `memory`."""
    return [
        (0x0, 0x9FBFF, "usable"),
        (0x9FC00, 0x9FFFF, "reserved"),
        (0xF0000, 0xFFFFF, "reserved"),
        (0x100000, memory - 1, "usable"),
    ]


def version_lines(machine: Machine) -> list[str]:
    """print_version() (xen/common/version.c:100-111): the boot log's and `h`'s first lines."""
    return [
        f"Xen version {XEN_VERSION} ({XEN_COMPILE_BY}@{XEN_COMPILE_DOMAIN}) "
        f"({XEN_COMPILER}) debug={'y' if machine.debug_build else 'n'} {XEN_COMPILE_DATE}",
        f"Latest ChangeSet: {XEN_CHANGESET}",
        f"build-id: {XEN_BUILD_ID}",
    ]


def boot(machine: Machine) -> Iterator[None]:
    con = machine.console
    p = con.printk
    host = machine.host
    con.putstr(XEN_BANNER)
    for line in version_lines(machine):
        p(line + "\n")
    p("Bootloader: GRUB 2.06-13+deb12u1\n")
    p(f"Command line: {XEN_COMMANDLINE}\n")
    p("Xen image load base address: 0\n")
    p("Disc information:\n")
    p(" Found 1 MBR signatures\n")
    p(" Found 1 EDD information structures\n")
    p("Xen-e820 RAM map:\n")
    for start, end, kind in e820_map(host.memory):
        p(f" [{start:016x}, {end:016x}] ({kind})\n")
    yield
    ram_kb = machine.e820_usable_pages() << 2
    p(f"System RAM: {ram_kb >> 10}MB ({ram_kb}kB)\n")
    # The heap was filled when the machine was built (init_heap_pages over the e820 RAM).
    p("Domain heap initialised\n")
    p("Using scheduler: SMP Credit Scheduler rev2 (credit2)\n")
    p(f"Allocated console ring of {con.ring.size >> 10} KiB.\n")
    for cpu in range(1, host.cpus):
        p(f"CPU{cpu}: booted\n")
    p(f"Brought up {host.cpus} CPUs\n")
    p("NX (Execute Disable) protection active\n")
    yield
    p("*** Building a PV Dom0 ***\n")
    yield from build_dom0(machine)
    p("Initial low memory virq threshold set at 0x4000 pages.\n")
    p("Scrubbing Free RAM in background\n")
    std, guest = con.thresh["standard"], con.thresh["guest"]

    def lvl(t: list[int]) -> str:
        s = loglvl_str(t[0])
        return s if t[0] == t[1] else f"{s} (Rate-limited: {loglvl_str(t[1])})"

    p(f"Std. Loglevel: {lvl(std)}\n")
    p(f"Guest Loglevel: {lvl(guest)}\n")
    con.switch_input()  # console_endboot(): input goes to DOM0
    p("Freed 656kB init memory\n")
    machine.booted = True


def build_dom0(machine: Machine) -> Iterator[None]:
    """Create Domain-0 from `dom0_mem` (a generator: boot may pause inside it)."""
    host = machine.host
    pages = host.dom0_mem >> PAGE_SHIFT
    p = machine.console.printk
    dom0 = domctl.build_dom0_memory(machine, pages)
    dom0.vcpus = [VcpuRecord(i, processor=i, blocked=True) for i in range(host.cpus)]
    runs = runs_of(dom0.p2m.astype(np.int64))
    s, e = max(runs, key=lambda r: r[1] - r[0])
    p(" Xen  kernel: 64-bit, lsb\n")
    p(" Dom0 kernel: 64-bit, PAE, lsb, paddr 0x1000000 -> 0x2a2c000\n")
    rest = pages - (e - s)
    more = f" ({rest} pages to be allocated)" if rest else ""
    p(
        f"PHYSICAL MEMORY ARRANGEMENT:\n Dom0 alloc.:   "
        f"{s << PAGE_SHIFT:016x}->{e << PAGE_SHIFT:016x}{more}\n"
    )
    yield
    p(f"Dom0 has maximum {host.cpus} VCPUs\n")
    yield


def boot_sync(machine: Machine) -> Machine:
    """Run the whole boot at once (tests, benchmarks: no console server)."""
    for _ in boot(machine):
        pass
    return machine
