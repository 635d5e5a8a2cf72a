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
from emu.dom0_layout import KERNEL_PEND, KERNEL_PSTART, dom0_layout
from emu.domain import VcpuRecord
from emu.e820 import e820_map
from emu.machine import Machine
from emu.mm.page import PAGE_SHIFT
from emu.mm.scrub import IdleScrubber
from emu.version import (
    XEN_BUILD_ID,
    XEN_CHANGESET,
    XEN_COMPILE_BY,
    XEN_COMPILE_DATE,
    XEN_COMPILE_DOMAIN,
    XEN_COMPILER,
    XEN_VERSION,
    xen_commandline,
)


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
    p(f"Command line: {xen_commandline(host.dom0_mem)}\n")
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
    machine.heap.mark_free_dirty()  # bootscrub=idle: free RAM is scrubbed once Xen idles
    p("Using scheduler: SMP Credit Scheduler rev2 (credit2)\n")
    p(f"Allocated console ring of {con.ring.size >> 10} KiB.\n")
    yield from start_hvm(machine)
    # cpu_up() of each AP prints nothing without `cpuinfo` (x86/smpboot.c:577-579).
    p(f"Brought up {host.cpus} CPUs\n")
    p("NX (Execute Disable) protection active\n")
    yield
    p(f"d0 has maximum {dom0_max_pirqs(host.cpus)} PIRQs\n")
    p("*** Building a PV Dom0 ***\n")
    yield from build_dom0(machine)
    p("Initial low memory virq threshold set at 0x4000 pages.\n")
    p("Scrubbing Free RAM in background\n")  # xen/common/page_alloc.c:2428-2429
    scrubber = IdleScrubber(machine.heap, lambda: some_pcpu_idle(machine))
    if machine.sched is not None:
        machine.sched.on_idle = scrubber.kick  # idle_loop() -> scrub_free_pages()
    scrubber.start()
    std, guest = con.thresh["standard"], con.thresh["guest"]

    def lvl(t: list[int]) -> str:
        s = loglvl_str(t[0])
        return s if t[0] == t[1] else f"{s} (Rate-limited: {loglvl_str(t[1])})"

    p(f"Std. Loglevel: {lvl(std)}\n")
    p(f"Guest Loglevel: {lvl(guest)}\n")
    con.switch_input()  # console_endboot(): input goes to DOM0
    p("Freed 656kB init memory\n")
    machine.booted = True


def some_pcpu_idle(machine: Machine) -> bool:
    """An idle pCPU runs the scrubber (idle_loop() -> scrub_free_pages())."""
    sched = machine.sched
    if sched is None:
        return True
    return any(sched.current_on(c) is None for c in range(machine.host.cpus))


def start_hvm(machine: Machine) -> Iterator[None]:
    """hvm_enable() (x86/hvm/hvm.c:157-199) with start_svm() (x86/hvm/svm/svm.c:2434-2486) on
    an AMD CPU whose SVM has none of the advanced features: no Nested Page Tables, so no
    HAP, and guests run on shadow paging. (`xl info`'s hw_caps say AMD: SVM in 80000001 ECX.)
    """
    p = machine.console.printk
    p("SVM: Supported advanced features:\n")
    p(" - none\n")
    p("HVM: SVM enabled\n")
    p("HVM: Hardware Assisted Paging (HAP) not detected\n")
    yield


# Interrupt limits of this host: one IO-APIC with 24 pins (nr_irqs_gsi), NR_DYNAMIC_VECTORS
# = 0xef - 0x20 + 1 (x86/include/asm/irq-vectors.h:39-41).
NR_IRQS_GSI = 24
NR_DYNAMIC_VECTORS = 0xEF - 0x20 + 1


def dom0_max_pirqs(cpus: int) -> int:
    """arch_hwdom_irqs() (x86/io_apic.c:2519-2542) for a PV dom0 with one vCPU per CPU, with
    nr_irqs from init_ioapic_mappings() (io_apic.c:2508-2512)."""
    nr_irqs = max(cpus * NR_DYNAMIC_VECTORS, 8 * NR_IRQS_GSI)
    max_irqs = min(nr_irqs, 4096 * 8)
    return min(NR_IRQS_GSI + cpus * NR_DYNAMIC_VECTORS, max_irqs)


def build_dom0(machine: Machine) -> Iterator[None]:
    """Create Domain-0 from `dom0_mem` (a generator: boot may pause inside it) and print
    dom0_construct()'s lines (x86/pv/dom0_build.c:443, :482-486, :666-693, :824)."""
    host = machine.host
    pages = host.dom0_mem >> PAGE_SHIFT
    p = machine.console.printk
    dom0 = domctl.build_dom0_memory(machine, pages)
    dom0.vcpus = [VcpuRecord(i, processor=i, blocked=True) for i in range(host.cpus)]
    lay = dom0_layout(pages)
    p(" Xen  kernel: 64-bit, lsb\n")  # no ", compat32": CONFIG_PV32 defaults to n
    # parms.pae is zapped for a 64-bit kernel (dom0_build.c:470-475): no ", PAE".
    p(f" Dom0 kernel: 64-bit, lsb, paddr {KERNEL_PSTART:#x} -> {KERNEL_PEND:#x}\n")
    s, first = _first_chunk(dom0.p2m, lay.order)
    more = f" ({pages - first} pages to be allocated)" if first < pages else ""
    p(
        f"PHYSICAL MEMORY ARRANGEMENT:\n Dom0 alloc.:   "
        f"{s << PAGE_SHIFT:016x}->{(s + first) << PAGE_SHIFT:016x}{more}\n"
    )
    for line in lay.virtual_lines():
        p(line + "\n")
    yield
    p(f"Dom{dom0.domid} has maximum {host.cpus} VCPUs\n")
    yield


def _first_chunk(p2m: np.ndarray, order: int) -> tuple[int, int]:
    """Dom0's first 2^order pfns as one machine chunk (the block alloc_domheap_pages() took
    in Xen): its first MFN and length. Our dom0 is populated in one bulk allocation, largest
    chunks first, so pfn 0 starts a contiguous run of at least that size."""
    n = min(1 << order, len(p2m))
    run = p2m[:n].astype(np.int64)
    contiguous = np.flatnonzero(np.diff(run) != 1)
    length = int(contiguous[0]) + 1 if contiguous.size else n
    return int(run[0]), length


def boot_sync(machine: Machine) -> Machine:
    """Run the whole boot at once (tests, benchmarks: no console server)."""
    for _ in boot(machine):
        pass
    return machine
