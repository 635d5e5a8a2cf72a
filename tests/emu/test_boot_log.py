"""The boot log's CPU, HVM and dom0-build lines, each against the Xen 4.22 format it uses."""

from __future__ import annotations

import numpy as np
import pytest

from emu.boot import boot_sync, dom0_max_pirqs
from emu.host import HostConfig
from emu.machine import Machine


@pytest.fixture
def log():
    m = Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20), guests=False)
    chunks: list[bytes] = []
    m.console.sinks.append(chunks.append)
    boot_sync(m)
    yield m, b"".join(chunks).decode().replace("\r\n", "\n").split("\n")
    m.shutdown()


def block(lines: list[str], first: str, n: int) -> list[str]:
    i = lines.index(first)
    return lines[i : i + n]


def test_cpus_and_hvm_start_up(log):
    _, lines = log
    # x86/hvm/svm/svm.c:2450 and :2459-2479 (" - %s" per feature, " - none" without any);
    # x86/hvm/hvm.c:180 "HVM: %s enabled", :144 no HAP; x86/setup.c:2168 "Brought up %ld
    # CPUs"; setup.c:2186 NX. No per-CPU line: smpboot.c:577 prints only with `cpuinfo`.
    assert block(lines, "(XEN) SVM: Supported advanced features:", 6) == [
        "(XEN) SVM: Supported advanced features:",
        "(XEN)  - none",
        "(XEN) HVM: SVM enabled",
        "(XEN) HVM: Hardware Assisted Paging (HAP) not detected",
        "(XEN) Brought up 2 CPUs",
        "(XEN) NX (Execute Disable) protection active",
    ]
    assert not [ln for ln in lines if ln.endswith(": booted")]


def test_command_line_names_dom0_mem(log):
    _, lines = log
    # x86/setup.c "Command line: %s"; dom0's size comes from dom0_mem= (x86/dom0_build.c).
    assert (
        "(XEN) Command line: console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=256M"
    ) in lines


def test_dom0_build_block(log):
    m, lines = log
    dom0 = m.domains[0]
    s = int(dom0.p2m[0])
    assert np.array_equal(dom0.p2m[:16384].astype(np.int64), np.arange(s, s + 16384))
    # x86/io_apic.c:2539 "%pd has maximum %u PIRQs": 24 GSIs + 2 CPUs x 208 vectors, capped
    # by nr_irqs = max(2 x 208, 8 x 24) = 416 (io_apic.c:2508-2512, :2521-2536).
    assert dom0_max_pirqs(2) == 416 and dom0_max_pirqs(1) == 208  # 1 CPU: nr_irqs 208
    assert block(lines, "(XEN) d0 has maximum 416 PIRQs", 16) == [
        "(XEN) d0 has maximum 416 PIRQs",
        "(XEN) *** Building a PV Dom0 ***",  # pv/dom0_build.c:418
        "(XEN)  Xen  kernel: 64-bit, lsb",  # :443, CONFIG_PV32=n: no ", compat32"
        "(XEN)  Dom0 kernel: 64-bit, lsb, paddr 0x1000000 -> 0x2a2c000",  # :482, pae zapped
        "(XEN) PHYSICAL MEMORY ARRANGEMENT:",  # :666-671: order 14 chunk, the rest later
        f"(XEN)  Dom0 alloc.:   {s << 12:016x}->{(s + 16384) << 12:016x} "
        "(49152 pages to be allocated)",
        "(XEN) VIRTUAL MEMORY ARRANGEMENT:",  # :679-693, %p = 16 hex digits
        "(XEN)  Loaded kernel: ffffffff81000000->ffffffff82a2c000",
        "(XEN)  Phys-Mach map: 0000008000000000->0000008000080000",  # 65536 pfns x 8 bytes
        "(XEN)  Start info:    ffffffff82a2c000->ffffffff82a2c4b8",  # start_info + vga info
        "(XEN)  Page tables:   ffffffff82a2d000->ffffffff82a46000",  # 1 + 1 + 1 + 22 pages
        "(XEN)  Boot stack:    ffffffff82a46000->ffffffff82a47000",
        "(XEN)  TOTAL:         ffffffff80000000->ffffffff82c00000",  # 4 MiB-rounded, >= 512K
        "(XEN)  ENTRY ADDRESS: ffffffff82a1b1c0",
        "(XEN) Dom0 has maximum 2 VCPUs",  # :824
        "(XEN) Initial low memory virq threshold set at 0x4000 pages.",
    ]


def test_e820_map_has_the_hole_and_reserved_ranges_dom0s_rangesets_assume():
    """x86/e820.c print_e820_memory_map(): " [%016Lx, %016Lx] " + type. The IO-APIC and
    local APIC pages are the ones dom0's `I/O Memory { 0-febff, fec01-fedff, fee01-... }`
    leaves out; above 3 GiB RAM is relocated past the 32-bit hole (emu/e820.py)."""
    m = Machine(HostConfig(memory=4 << 30, cpus=2, dom0_mem=512 << 20), guests=False)
    chunks: list[bytes] = []
    m.console.sinks.append(chunks.append)
    try:
        boot_sync(m)
        lines = b"".join(chunks).decode().replace("\r\n", "\n").split("\n")
        assert block(lines, "(XEN) Xen-e820 RAM map:", 10) == [
            "(XEN) Xen-e820 RAM map:",
            "(XEN)  [0000000000000000, 000000000009fbff] (usable)",
            "(XEN)  [000000000009fc00, 000000000009ffff] (reserved)",
            "(XEN)  [00000000000f0000, 00000000000fffff] (reserved)",
            "(XEN)  [0000000000100000, 00000000bfffffff] (usable)",
            "(XEN)  [00000000fec00000, 00000000fec00fff] (reserved)",
            "(XEN)  [00000000fee00000, 00000000fee00fff] (reserved)",
            "(XEN)  [00000000fffc0000, 00000000ffffffff] (reserved)",
            "(XEN)  [0000000100000000, 000000013fffffff] (usable)",
            "(XEN) System RAM: 4095MB (4193916kB)",  # x86/setup.c: 4 GiB less 1 MiB + 639 KiB
        ]
        # No frame of the hole is RAM: none is free, none is a domain's.
        ft = m.frames
        hole = slice(0xC0000, 0x100000)
        assert not np.any((ft.count_info[hole] >> np.uint64(58)) == 3)  # PGC_state_free
        assert m.ram.nr_frames == 0x140000 and m.total_pages() == 0x9F + 0x100000 - 0x100
    finally:
        m.shutdown()


def test_q_dom0_has_a_log_dirty_rangeset(log):
    """x86/mm/p2m-basic.c:89 (p2m_init_hostp2m() -> p2m_init_logdirty(), p2m.c:52) gives
    every domain, PV dom0 included, a "log-dirty" rangeset; rangesets print newest first
    (common/rangeset.c:457 list_add), so it follows I/O Ports (x86/domain.c:877-885)."""
    from keyhandlers import KEY_TABLE

    m, _ = log
    out: list[str] = []
    KEY_TABLE["q"].fn(m, out.append, ())
    i = out.index("Rangesets belonging to domain 0:")
    assert [ln.split("{")[0].rstrip() for ln in out[i + 1 : i + 5]] == [
        "    Interrupts",
        "    I/O Memory",
        "    I/O Ports",
        "    log-dirty",
    ]
    assert out[i + 4] == "    log-dirty  { }"
