"""Domains on the emulated machine: create/destroy/balloon, xl errors (acceptance 3), `q`.

These run the memory model alone: the guest subsystems (vCPUs on Unicorn, shadow paging) are
left out so that a domain's frames are exactly what the memory model gives it; the
end-to-end test (test_memory_e2e.py) runs the whole machine.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from emu.audit import audit
from emu.host import DomainSpec
from emu.mm.p2m import INVALID_M2P_ENTRY
from emu.mm.page import INVALID_MFN
from emu.shadow.common import shadow_enable
from keyhandlers import KEY_TABLE
from xenconsole.dom0.fs import Dom0Fs
from xenconsole.dom0.shell import Dom0Shell


class Lines(list):
    def __call__(self, line=""):
        self.append(line)


def pool_pages(dom) -> int:
    return len(dom.paging.pool_mfns()) if dom.paging is not None else 0


# Memory only: no guest CPUs, a dom0 of 128 MiB (tests/conftest.py's `machine`).
pytestmark = pytest.mark.machine(dom0_mem=128 << 20, guests=False)


@pytest.fixture
def xl(machine):
    out = bytearray()
    sh = Dom0Shell(machine, out.extend, Dom0Fs("/"))  # tests name files by host path

    def run(cmd: str) -> tuple[int, str]:
        out.clear()
        status = sh.run(cmd)
        return status, out.decode().replace("\r\n", "\n")

    return run


def test_dom0_is_built_from_dom0_mem(machine):
    dom0 = machine.domains[0]
    assert dom0.tot_pages == 128 << 8 == dom0.nr_populated()
    assert dom0.max_pages == 4294967295 and dom0.xenheap_pages == 1
    assert len(dom0.vcpus) == 2
    gfns = dom0.populated_gfns()
    assert gfns.tolist() == list(range(128 << 8))
    assert np.array_equal(machine.m2p[dom0.p2m.astype(np.int64)], gfns.astype(np.uint64))
    assert machine.frames.owned_by(0).size == dom0.tot_pages
    assert audit(machine) == []
    ring = machine.console.ring.read().decode()
    assert "(XEN) System RAM: 511MB (523900kB)\n" in ring
    assert re.search(r"\(XEN\)  Dom0 alloc\.:   [0-9a-f]{16}->[0-9a-f]{16} \(16384 pages", ring)


def test_create_balloon_destroy_to_the_page(machine):
    free0, xen0 = machine.free_pages(), machine.xen_frames()
    dom = machine.create_domain(DomainSpec(name="web", memory=64))
    assert dom.domid == 1 and dom.tot_pages == 16384 and dom.max_pages == 16384 + 256
    # memory + shared_info (+ shadow pool and Xen's own guest-entry frames when guests run)
    xen_new = machine.xen_frames() - xen0
    used = 16384 + 1 + pool_pages(dom) + xen_new
    assert machine.free_pages() == free0 - used
    assert machine.frames.owned_by(1).size == 16384
    assert audit(machine) == []
    # Balloon down: the highest unreserved gfns go back to the heap, scrubbed.
    machine.set_target(dom, 4096)
    assert dom.tot_pages == 4096 and machine.free_pages() == free0 - used + 12288
    assert dom.nr_populated() == 4096 and audit(machine) == []
    assert np.all(dom.p2m[4096:16384] == INVALID_MFN)
    # ... and up again, to the page.
    machine.set_target(dom, 16384)
    assert dom.tot_pages == 16384 and machine.free_pages() == free0 - used
    assert audit(machine) == []
    machine.destroy_domain(dom)
    assert machine.free_pages() == free0 - xen_new and 1 not in machine.domains
    assert np.count_nonzero(machine.m2p != INVALID_M2P_ENTRY) == 128 << 8
    assert audit(machine) == []
    # Domain ids count up, never reused.
    assert machine.create_domain(DomainSpec(name="web", memory=8)).domid == 2


def test_balloon_never_takes_reserved_gfns(machine):
    dom = machine.create_domain(DomainSpec(name="r", memory=16))
    dom.reserved_gfns = set(range(0, 0x100)) | {4095}
    machine.set_target(dom, 0)
    assert dom.populated_gfns().tolist() == [*range(0x100), 4095]
    assert dom.tot_pages == 0x101 and audit(machine) == []


def test_config_domains_start_like_xl_create(machine):
    errors = machine.start_config_domains(
        [
            DomainSpec(name="a", memory=8),
            DomainSpec(name="a", memory=8),
            DomainSpec(name="b", memory=8, vcpus=2),
        ]
    )
    assert [d.name for d in machine.domains.values()] == ["Domain-0", "a", "b"]
    assert sorted(machine.domains) == [0, 1, 2]
    assert errors == [
        "a: libxl: error: libxl_domain.c:81:libxl__domain_rename: Domain with "
        'name "a" already exists.'
    ]
    assert len(machine.domains[2].vcpus) == 2 and machine.domains[2].spec.memory == 8


def test_xl_create_list_memset_destroy(xl, machine, tmp_path):
    cfg = tmp_path / "web.cfg"
    cfg.write_text('# web server\nname = "web"\nmemory = 64\nvcpus = 2; maxmem = 96\n')
    assert xl(f"xl create {cfg}") == (0, f"Parsing config from {cfg}\n")
    dom = machine.find_domain("web")
    assert (dom.tot_pages, dom.max_pages, dom.static_max_kb) == (16384, 24576 + 256, 96 << 10)
    assert dom.spec == DomainSpec(name="web", memory=64, maxmem=96, vcpus=2, workload="idle")
    status, out = xl("xl list")
    assert status == 0
    assert out.splitlines()[2].startswith(
        "web                                          1    64     2"
    )
    # libxl_set_memory_target() (tools/libs/light/libxl_mem.c:180-330) sets the target and,
    # enforced, max_pages; frames move only when the guest's balloon driver acts. This
    # machine runs no guest CPUs, so no driver: the frames stay (the driver's side is in
    # tests/emu/test_hvm_abi.py).
    assert xl("xl mem-set web 32m") == (0, "")
    assert dom.tot_pages == 16384 and dom.target_pages == 8192 and dom.max_pages == 8192 + 256
    assert xl("xl mem-max web 80") == (0, "")
    assert xl("xl mem-set web 80") == (0, "")
    assert dom.tot_pages == 16384 and dom.target_pages == 20480
    assert xl("xl create -p /dev/null 'name=\"web2\"' memory=16") == (
        0,
        "Parsing config from /dev/null\n",
    )
    assert machine.find_domain("web2").pause_count == 1
    assert xl("xl destroy web") == (0, "")
    assert xl("xl destroy 2") == (0, "")
    assert list(machine.domains) == [0] and audit(machine) == []


P = "Parsing config from /dev/null\n"  # xl_vmcontrol.c:847
NOMEM = "failed to free memory for the domain\n"
BAD = [
    (
        "xl create /nonexistent.cfg",
        3,
        "Failed to read config file: /nonexistent.cfg: No such file or directory\n",
    ),
    (
        "xl create /dev/null 'name=\"x\"' memory=-5",
        3,
        P + "Invalid memory size: -5 (MiB, must be positive)\n",
    ),
    ("xl create /dev/null 'name=\"x\"' memory=99999999", 3, P + NOMEM),
    ("xl create /dev/null 'name=\"x\"' memory=400", 3, P + NOMEM),
    (
        "xl create /dev/null 'name=\"x\"' 'memory=\"lots\"'",
        1,
        P + "/dev/null:3: parameter `memory' is not a valid number\n"
        "Failed to parse config: Invalid argument\n",
    ),
    (
        # xl appends KEY=VALUE arguments to the config text (xl_vmcontrol.c:831), so a bare
        # word is an IDENT where a value belongs (libxlu_cfg_l.l:55, libxlu_cfg_y.y:33;
        # message libxlu_cfg.c:699).
        "xl create /dev/null name=x",
        1,
        P + "/dev/null:2: config parsing error near `x': syntax error, unexpected IDENT, "
        "expecting STRING or NUMBER or '['\nFailed to parse config: Invalid argument\n",
    ),
    (
        "xl create /dev/null 'name=\"x\"' colour=1",
        1,
        P + "/dev/null:3: unknown parameter `colour' (supported: name, memory, maxmem, vcpus, "
        "workload, type, kernel, cmdline, extra, loader, on_poweroff, on_crash, on_reboot, "
        "max_event_channels, viridian)\nFailed to parse config: Invalid argument\n",
    ),
    ("xl create /dev/null memory=8", 1, P + "Domain name must be specified.\n"),
    (
        # xl_vmcontrol.c:838: no config file; main_create returns -ERROR_INVAL
        # (libxl_types.idl:53). KEY=VALUE arguments alone are not a config.
        "xl create 'name=\"x\"' memory=8",
        6,
        "Config file not specified and none in save file\n",
    ),
    ("xl create", 6, "Config file not specified and none in save file\n"),
    (
        "xl create /dev/null 'name=\"Domain-0\"'",
        3,
        P + 'libxl: error: libxl_domain.c:81:libxl__domain_rename: Domain with name "Domain-0" '
        "already exists.\n",
    ),
    (
        "xl destroy 0",
        1,
        "Not destroying domain 0; use -f to force.\nThis can only be done when using a "
        "disaggregated hardware domain and toolstack.\n\n",
    ),
    (
        "xl destroy Domain-0",
        1,
        "Not destroying domain 0; use -f to force.\nThis can only be done when using a "
        "disaggregated hardware domain and toolstack.\n\n",
    ),
    ("xl destroy nosuch", 1, "nosuch is an invalid domain identifier (rc=-6)\n"),
    (
        "xl mem-set Domain-0 64",
        1,
        "libxl: error: libxl_mem.c:288:libxl_set_memory_target: Domain 0:New target 65536 for "
        "dom0 is below the minimum threshold\ncannot set domid 0 dynamic max memory to : 64\n",
    ),
    ("xl mem-set 0 12q", 1, "invalid memory size: 12q\n"),
    ("xl mem-set 0 -- -5", 1, "invalid memory size: -5\n"),
    ("xl mem-max 0 -- -1g", 1, "invalid memory size: -1g\n"),
    ("xl mem-set 0 99999999999999999999t", 1, "invalid memory size: 99999999999999999999t\n"),
    (
        "xl mem-set 0 2t",
        1,
        "libxl: error: libxl_mem.c:279:libxl_set_memory_target: Domain 0:memory_dynamic_max "
        "must be less than or equal to memory_static_max\n"
        "cannot set domid 0 dynamic max memory to : 2t\n",
    ),
    (
        "xl mem-max 0 1",
        1,
        "libxl: error: libxl_mem.c:60:libxl_domain_setmaxmem: Domain 0:memory_static_max must "
        "be greater than or or equal to memory_dynamic_max\n"
        "cannot set domid 0 static max memory to : 1\n",
    ),
    ("xl mem-max 0 x1", 1, "invalid memory size: x1\n"),
]


@pytest.mark.parametrize("cmd,status,out", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_xl_errors_and_allocates_nothing(xl, machine, cmd, status, out):
    free0 = machine.free_pages()
    tot0 = machine.domains[0].tot_pages
    assert xl(cmd) == (status, out)
    assert machine.free_pages() == free0 and machine.domains[0].tot_pages == tot0
    assert list(machine.domains) == [0]
    assert audit(machine) == []


def test_duplicate_names_and_exhaustion(xl, machine):
    assert xl("xl create /dev/null 'name=\"a\"' memory=200")[0] == 0
    free = machine.free_pages()
    assert xl("xl create /dev/null 'name=\"a\"' memory=8") == (
        3,
        P + 'libxl: error: libxl_domain.c:81:libxl__domain_rename: Domain with name "a" '
        "already exists.\n",
    )
    # The heap has less than 200 MiB left: refused whole, nothing allocated.
    assert xl("xl create /dev/null 'name=\"b\"' memory=200") == (3, P + NOMEM)
    assert machine.free_pages() == free and audit(machine) == []
    assert xl("xl mem-max a 100000") == (0, "")
    # Only the target moves (libxl_mem.c:180-330): no balloon driver runs on this machine
    # without guest CPUs, so the heap keeps its frames.
    assert xl("xl mem-set a 100000") == (0, "")
    dom = machine.find_domain("a")
    assert dom.target_pages == 100000 << 8 and dom.tot_pages == 200 << 8
    assert machine.free_pages() == free and audit(machine) == []
    assert xl("xl destroy a") == (0, "") and audit(machine) == []


def test_q_format(machine):
    dom = machine.create_domain(DomainSpec(name="q1", memory=8))
    out = Lines()
    KEY_TABLE["q"].fn(machine, out, ())
    assert re.fullmatch(r"'q' pressed -> dumping domain info \(now = \d+\)", out[0])
    i = out.index("General information for domain 1:")
    xen = machine.frames.xenpages_of(1)[0]
    paging = []
    if dom.paging is not None:
        paging = ["    paging assistance: shadow refcounts translate external "]
    assert (
        out[i : i + 15]
        == [
            "General information for domain 1:",
            "    refcnt=3 dying=0 pause_count=0",
            "    nr_pages=2048 xenheap_pages=1 dirty_cpus={} max_pages=2304",
            f"    handle={dom.handle} vm_assist=00000020",
            *paging,
            "Rangesets belonging to domain 1:",
            "    Interrupts { }",
            "    I/O Memory { }",
            "    I/O Ports  { }",
            "    log-dirty  { }",
            "Memory pages belonging to domain 1:",
            "    DomPage list too long to display",
            "    PoD entries=0 cachesize=0",
            f"    XenPage {xen:016x}: caf=c000000000000001, taf=e400000000000001",
            "NODE affinity for domain 1: [0]",
            "VCPU information and callbacks for domain 1:",
        ][:15]
    )
    d0 = out.index("General information for domain 0:")
    assert out[d0 + 2] == "    nr_pages=32768 xenheap_pages=1 dirty_cpus={} max_pages=4294967295"
    assert out[d0 + 3] == ("    handle=00000000-0000-0000-0000-000000000000 vm_assist=0000002d")
    assert out[d0 + 4] == "Rangesets belonging to domain 0:"  # PV dom0: no paging line
    assert "  UNIT0 affinities: hard={0-1} soft={0-1}" in out
    assert out[-3:] == [
        "Notifying guest 0:0 (virq 1, port 7)",
        "Notifying guest 0:1 (virq 1, port 13)",
        "Notifying guest 1:0 (virq 1, port 0)",
    ]


def lend_to_pool(dom, mfn: int) -> None:
    """Put frame `mfn` on `dom`'s (real) shadow pool as a free pool frame."""
    dom.paging.pool.frames.append(mfn)
    dom.paging.pool.freelist.append(mfn)


def take_from_pool(dom, mfn: int) -> None:
    dom.paging.pool.frames.remove(mfn)
    dom.paging.pool.freelist.remove(mfn)


def test_audit_finds_each_kind_of_violation(machine):
    from emu.mm.page_info import PGC_allocated, PGC_state_free

    dom = machine.create_domain(DomainSpec(name="v", memory=8))
    ft = machine.frames
    mfn = int(dom.p2m[5])
    # 1. A frame owned twice: dom0's P2M also maps one of d1's frames.
    dom0 = machine.domains[0]
    saved = int(dom0.p2m[7])
    dom0.p2m[7] = mfn
    got = audit(machine)
    assert f"1 frame(s) in d0's P2M but not owned by it: {mfn:#x}" in got
    assert f"1 frame(s) mapped by d1 and by another P2M: {mfn:#x}" in got
    assert f"1 frame(s) owned but in no P2M: {saved:#x}" in got
    dom0.p2m[7] = saved
    assert audit(machine) == []
    # 2. M2P disagreeing with the P2M.
    machine.m2p[mfn] = 6
    assert audit(machine) == [f"1 frame(s) in d1's P2M with M2P disagreeing: {mfn:#x}"]
    machine.m2p[mfn] = 5
    # 3. A lost frame: taken off the heap's free lists without being marked in use.
    a = machine.heap.alloc_heap_pages(0)
    ft.count_info[a] = PGC_state_free
    got = audit(machine)
    assert f"1 frame(s) free in page_info but on no free list: {a:#x}" in got
    ft.count_info[a] = 0
    assert audit(machine) == [f"1 frame(s) in no state (lost): {a:#x}"]
    # ... which is fine once it belongs to a shadow pool, but not to two.
    other = machine.create_domain(DomainSpec(name="w", memory=8))
    shadow_enable(machine, dom)
    shadow_enable(machine, other)
    lend_to_pool(dom, a)
    assert audit(machine) == []
    lend_to_pool(other, a)
    assert audit(machine) == [f"1 frame(s) in two shadow pools: {a:#x}"]
    take_from_pool(other, a)
    machine.destroy_domain(other)
    # 4. A pool frame that is also a domain's page.
    lend_to_pool(dom, mfn)
    assert audit(machine) == [
        f"1 frame(s) in d1's shadow pool but not anonymous in-use: {mfn:#x}",
        # ... and the shadow audit (emu/shadow/audit.py) sees the pool frame's header wrong
        f"shadow: d1: 1 shadow pool frame(s) with count_info != 0: {mfn:#x}",
        f"shadow: d1: 1 free shadow frame(s) not SH_type_none: {mfn:#x}",
    ]
    take_from_pool(dom, mfn)
    take_from_pool(dom, a)
    machine.heap.free_heap_pages(a, 0)
    # 5. Accounting: tot_pages off by one; an owner that is not a live domain.
    dom.tot_pages += 1
    assert audit(machine) == ["d1: tot_pages=2049 but 2048 frames owned and 2048 P2M entries"]
    dom.tot_pages -= 1
    ft.v[mfn] = 42
    got = audit(machine)
    assert f"1 frame(s) owned by no live domain: {mfn:#x}" in got
    ft.v[mfn] = 2
    ft.count_info[mfn] = PGC_allocated  # reference count 0
    assert audit(machine) == [f"1 frame(s) allocated with reference count 0: {mfn:#x}"]
    ft.count_info[mfn] = PGC_allocated | 1
    assert audit(machine) == []


def test_F_key_prints_summary_and_capped_violations(machine):
    out = Lines()
    KEY_TABLE["F"].fn(machine, out, ())
    assert re.fullmatch(r"'F' pressed -> auditing frame table and shadows \(now = \d+\)", out[0])
    nr = machine.ram.nr_frames
    free, xen = machine.free_pages(), machine.xen_frames() + 1
    assert out[1:] == [
        f"audit: frames={nr} free={free} xen={xen} domain=32768 shadow=0",
        "audit: d0 owns 32768 frames",
        "audit: consistent",
    ]
    assert KEY_TABLE["F"].desc == "audit frame table, heap, P2M/M2P and shadow pools"
    # 25 broken domains: 20 violation lines, the rest counted.
    doms = [machine.create_domain(DomainSpec(name=f"x{i}", memory=4)) for i in range(25)]
    for d in doms:
        d.tot_pages += 1
    out = Lines()
    KEY_TABLE["F"].fn(machine, out, ())
    viol = [ln for ln in out if ln.startswith("audit: violation: ")]
    assert (
        viol[0] == "audit: violation: d1: tot_pages=1025 but 1024 frames owned and 1024 P2M entries"
    )
    assert len(viol) == 20
    assert out[-2:] == ["audit: ... 5 more not shown", "audit: 25 violation(s)"]


def test_O_toggles_shadow_audits(machine):
    """xen/arch/x86/mm/shadow/common.c:133-135: printk("%s shadow_audit_enable=%d\\n",
    __func__, ...); registered at common.c:140 as "toggle shadow audits", not diagnostic."""
    kh = KEY_TABLE["O"]
    assert (kh.desc, kh.diagnostic) == ("toggle shadow audits", False)
    out = Lines()
    kh.fn(machine, out, ())
    assert out == ["shadow_audit_key shadow_audit_enable=1"] and machine.shadow_audit_enable
    kh.fn(machine, out, ())
    assert out[1] == "shadow_audit_key shadow_audit_enable=0"
    assert not machine.shadow_audit_enable


def test_q_lists_dompages_below_10_pages(machine):
    dom = machine.create_domain(DomainSpec(name="tiny", memory=8))
    machine.set_target(dom, 3)
    out = Lines()
    KEY_TABLE["q"].fn(machine, out, ())
    i = out.index("Memory pages belonging to domain 1:")
    mfns = sorted(int(m) for m in dom.p2m[:3])
    assert out[i + 1 : i + 4] == [
        f"    DomPage {m:016x}: caf=8000000000000001, taf=0000000000000000" for m in mfns
    ]
    assert out[i + 4] == "    PoD entries=0 cachesize=0"


def test_xl_create_overrides_and_dry_run(xl, machine, tmp_path):
    cfg = tmp_path / "g.cfg"
    cfg.write_text("name = 'g'\nmemory = 64\nworkload = \"idle\"\n")
    free = machine.free_pages()
    assert xl(f"xl create -n {cfg} memory=32 vcpus=2") == (
        0,
        f'Parsing config from {cfg}\nname = "g"\nmemory = 32\nmaxmem = 32\nvcpus = 2\n'
        'workload = "idle"\n',
    )
    assert machine.free_pages() == free and list(machine.domains) == [0]
    assert xl(f"xl create -q {cfg} memory=32 'name=\"h\"'") == (0, "")
    dom = machine.find_domain("h")
    assert dom.tot_pages == 32 << 8 and machine.find_domain("g") is None
    status, out = xl(f"xl create {cfg} {cfg}")
    assert status == 2 and out.startswith("Usage: xl")
    bad = tmp_path / "bad.cfg"
    bad.write_text('name = "b"\nmemory = = 3\n')
    assert xl(f"xl create {bad}") == (
        1,
        f"Parsing config from {bad}\n{bad}:2: config parsing error near `= 3': syntax error\n"
        "Failed to parse config: Invalid argument\n",
    )


def test_audit_includes_the_shadow_audit(machine):
    dom = machine.create_domain(DomainSpec(name="s", memory=8))
    sd = shadow_enable(machine, dom)
    assert audit(machine) == []
    a = sd.pool.freelist[-1]
    machine.frames.count_info[a] = 1  # still anonymous in use: only the shadow audit objects
    assert audit(machine) == [f"shadow: d1: 1 shadow pool frame(s) with count_info != 0: {a:#x}"]
    machine.frames.count_info[a] = 0
    assert audit(machine) == []


def test_xl_create_odd_files(xl, machine, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert xl(f"xl create {fifo}") == (3, f"Failed to read config file: {fifo}: Invalid argument\n")
    assert xl(f"xl create {tmp_path}") == (
        3,
        f"Failed to read config file: {tmp_path}: Invalid argument\n",
    )
    binary = tmp_path / "bin.cfg"
    binary.write_bytes(b"\x00\xff" * 5000)
    status, out = xl(f"xl create {binary}")
    assert (
        status == 1
        and len(out) < 300
        and out.endswith("Failed to parse config: Invalid argument\n")
    )
    assert xl("xl create /dev/null 'name=\"n\"' memory=8") == (0, P)
    assert list(machine.domains) == [0, 1] and audit(machine) == []


@pytest.mark.parametrize(
    "table,err",
    [
        ("memory = -5", "<t>: domain 0: memory must be a positive number of MiB, got -5"),
        ("memory = 64\nmaxmem = 32", "<t>: domain 0: maxmem (32) is below memory (64)"),
        ("vcpus = 0", "<t>: domain 0: vcpus must be between 1 and 128, got 0"),
        ("colour = 1", "<t>: domain 0: unknown key 'colour'"),
    ],
)
def test_host_config_domain_errors(table, err):
    from emu.host import ConfigError, parse_config_text

    with pytest.raises(ConfigError) as e:
        parse_config_text(f'[[domain]]\nname = "a"\n{table}\n', "<t>")
    assert str(e.value) == err
