"""emu/access/scan.py and the `U`/`Z` handlers on a machine without a console server (real guests on
Unicorn under the real shadow code): per-gfn arrays against the guest's own PTE A/D bits,
the heat line's buckets and thresholds, and that nothing the hypervisor does (U, Z's scan,
W, X) changes the access record or a guest page-table entry.
"""

from __future__ import annotations

import numpy as np
import pytest
from guest_helpers import PTE_A, PTE_D, Out, asm_guest, console_lines, create, new_machine, wait_for
from guest_helpers import run_key as run

from emu.access.scan import DomainScan, ScanError, reset_window, scan_all, scan_domain
from emu.audit import audit
from emu.domain_build import guest_pte_flags
from keyhandlers import KeyhandlerError
from keyhandlers.access import (
    heat,
    heat_line,
    parse_report,
    reset_accessed_window,
    scan_accessed_pages,
    summary_line,
)
from keyhandlers.hexdump import hexdump_memory
from keyhandlers.walk import walk_shadow_pagetables

pytestmark = [pytest.mark.timeout(60), pytest.mark.machine(shared=True)]


def all_ptes(m, dom) -> np.ndarray:
    return guest_pte_flags(m, dom, np.arange(len(dom.p2m)))


@pytest.mark.parametrize(
    "workload,n",
    [("touch:pages=257,stride=2,write=1", 257), ("touch:pages=700,start=0x400", 700)],
)
def test_arrays_equal_the_guest_pte_bits(machine, workload, n):
    dom = create(machine, "arr", workload, memory=16)
    assert wait_for(lambda: f"touch done {n}" in console_lines(dom))
    s = scan_domain(machine, dom)
    ptes = all_ptes(machine, dom)
    # RAM is laid out around the shared_info hole at gfn 0x0e (emu/domain_build.py), so
    # the P2M spans gfns 0-0x1000; the kernel mapped shared_info into the hole.
    assert s.gfn.tolist() == list(range(4097)) and s.owned.all()
    assert np.array_equal(s.accessed, (ptes & PTE_A) != 0)
    assert np.array_equal(s.dirty, (ptes & PTE_D) != 0)
    assert np.array_equal(s.window, s.accessed)
    assert np.array_equal(s.first_touch_ns != 0, s.accessed)
    arena = scan_domain(machine, dom, 0x100, 0xFFF)
    assert arena.nr_accessed == n and arena.gfn[0] == 0x100 and arena.gfn.size == 0xF00
    assert arena.nr_dirty == (n if "write=1" in workload else 0)
    assert summary_line(arena) == (
        f"d{dom.domid} pages=3840 accessed={n} dirty={arena.nr_dirty} window={n} never={3840 - n}"
    )
    # A range beyond the P2M: the pages past its end are not owned, nothing is invented.
    far = scan_domain(machine, dom, 0xF00, 0x1FFF)
    assert far.gfn.size == 0x101 and far.pages == 0x101
    machine.destroy_domain(dom)


def _synthetic(owned, window, first=0) -> DomainScan:
    owned = np.asarray(owned, dtype=bool)
    window = np.asarray(window, dtype=bool) & owned
    n = owned.size
    z = np.zeros(n, dtype=bool)
    return DomainScan(
        1,
        first,
        first + n - 1,
        np.zeros(n, dtype=np.uint64),
        owned,
        window.copy(),
        z,
        window,
        np.zeros(n, dtype=np.uint64),
    )


def test_heat_thresholds_and_buckets():
    # 64 columns of 100 pages: column c has c accessed... up to 63%; then the boundaries.
    win = np.zeros(6400, dtype=bool)
    counts = [0, 1, 24, 25, 49, 50, 74, 75, 100] + [0] * 55
    for c, k in enumerate(counts):
        win[c * 100 : c * 100 + k] = True
    s = _synthetic(np.ones(6400), win)
    assert heat(s) == " ..::oo##" + " " * 55
    # Holes do not dilute a column: 3 owned pages, all accessed, is `#`.
    owned = np.zeros(6400, dtype=bool)
    owned[:3] = True
    s = _synthetic(owned, owned)
    assert heat(s) == "#" + " " * 63
    # Fewer gfns than columns: gfn g is column g * 64 // n; the others stay empty.
    s = _synthetic(np.ones(10), [1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    cols = [g * 64 // 10 for g in range(10)]
    assert cols[0] == 0 and cols[-1] == 57
    want = [" "] * 64
    want[0] = want[57] = "#"
    assert heat(s) == "".join(want)
    # An uneven split: 100 gfns, columns of 1 or 2 gfns, every gfn in exactly one column.
    s = _synthetic(np.ones(100), np.ones(100))
    owned_cols, win_cols = s.heat_counts()
    assert owned_cols.sum() == 100 and set(owned_cols.tolist()) == {1, 2}
    assert heat_line(s) == "d1 heat [" + "#" * 64 + "] 0x0-0x63"


def test_hypervisor_reads_change_nothing(machine):
    dom = create(machine, "ro", "touch:pages=300,stride=3,write=1", memory=16)
    assert wait_for(lambda: "touch done 300" in console_lines(dom))
    assert wait_for(lambda: dom.vcpus[0].blocked)
    acc = machine.access
    before = [a.copy() for a in (acc.accessed, acc.written, acc.window, acc.first_touch_ns)]
    mfns = dom.p2m.astype(np.int64)
    frames = machine.ram.u64[(mfns[:, None] << 9) + np.arange(512)].copy()  # every guest frame
    sl1 = dom.paging.shadow_l1_entries().copy()
    faults = machine.perfc.total("shadow_fault")
    d = f"d{dom.domid}"
    for _ in range(2):
        run(scan_accessed_pages, machine)
        run(scan_accessed_pages, machine, d, "0x100-0xfff")
        run(walk_shadow_pagetables, machine, d)
        run(walk_shadow_pagetables, machine, d, "0x103000")
        run(hexdump_memory, machine, hex(int(dom.p2m[0x103])), "4")
        run(hexdump_memory, machine, d, "0x40", "16")  # the guest's own page tables
        scan_all(machine)
    after = [acc.accessed, acc.written, acc.window, acc.first_touch_ns]
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(machine.ram.u64[(mfns[:, None] << 9) + np.arange(512)], frames)
    assert np.array_equal(dom.paging.shadow_l1_entries(), sl1)
    assert machine.perfc.total("shadow_fault") == faults
    machine.destroy_domain(dom)


LOOP = """
again:
    mov rsi, 0x300000
    mov rcx, 40
touch:
    mov al, byte ptr [rsi]
    add rsi, 0x1000
    dec rcx
    jnz touch
    mov rcx, 2000000
delay:
    dec rcx
    jnz delay
    jmp again
"""


def test_reset_window_then_accesses_through_present_shadows(machine, tmp_path):
    dom = asm_guest(machine, tmp_path, "zloop", LOOP, memory=16)
    assert wait_for(lambda: scan_domain(machine, dom, 0x100, 0xFFF).nr_accessed == 40)
    machine.sched.pause_domain(dom)
    faults = machine.perfc.total("shadow_fault")
    out = run(reset_accessed_window, machine, f"d{dom.domid}")
    assert out[0].startswith(f"d{dom.domid} window reset: A cleared in ")
    s = scan_domain(machine, dom, 0x100, 0xFFF)
    assert (s.nr_accessed, s.nr_window) == (40, 0)
    # The code and stack pages are outside the arena and were accessed again after Z only
    # once the vCPU runs: nothing moved while it was paused.
    assert scan_domain(machine, dom).nr_window == 0
    machine.sched.unpause_domain(dom)
    assert wait_for(lambda: scan_domain(machine, dom, 0x100, 0xFFF).nr_window == 40)
    # Seen through the shadow A bits the hardware set: no new shadow fault was needed.
    assert machine.perfc.total("shadow_fault") == faults
    s = scan_domain(machine, dom, 0x100, 0xFFF)
    assert np.flatnonzero(s.window).tolist() == list(range(0x200, 0x228))
    assert s.nr_accessed == 40
    machine.destroy_domain(dom)


def test_destroyed_and_dom0_are_not_reported(machine):
    dom = create(machine, "gone", "touch:pages=10", memory=8)
    assert wait_for(lambda: "touch done 10" in console_lines(dom))
    report = "\n".join("(XEN) " + x for x in run(scan_accessed_pages, machine))
    assert dom.domid in parse_report(report) and 0 not in parse_report(report)
    with pytest.raises(ScanError):
        scan_domain(machine, machine.domains[0])
    domid = dom.domid
    machine.destroy_domain(dom)
    assert domid not in [s.domid for s in scan_all(machine)]
    with pytest.raises(ScanError, match="not a shadowed guest"):
        scan_domain(machine, dom)
    with pytest.raises(ScanError):
        reset_window(machine, dom)
    with pytest.raises(KeyhandlerError, match=f"no domain d{domid}"):
        run(scan_accessed_pages, machine, f"d{domid}")
    with pytest.raises(KeyhandlerError, match="d0 is not a shadowed guest"):
        run(scan_accessed_pages, machine, "d0", "0x10-0x5")
    assert audit(machine) == []


def test_any_arguments_give_output_or_one_error(machine):
    """Seeded fuzz over argument tuples: a handler prints, or raises KeyhandlerError (one
    line); nothing else escapes, and the domain is unharmed."""
    import random

    dom = create(machine, "fz", "touch:pages=20", memory=8)
    assert wait_for(lambda: "touch done 20" in console_lines(dom))
    d = f"d{dom.domid}"
    tokens = [
        d,
        "d0",
        "d999",
        "d",
        "dd1",
        "0x100-0x7ff",
        "0x7ff-0x100",
        "0-0",
        "-",
        "5-",
        "0x",
        "1e5",
        "zz",
        "-1",
        "0x100",
        "16",
        "17",
        "0",
        str(1 << 70),
        "0x1fffff",
        "0xffff800000000000",
        "0x800000000000",
        "d1 ",
        "",
        "\x00",
        "é",
        "0x-1",
        "100",
        "0x1ffff",
        "0x1fff8",
    ]
    rng = random.Random(5)
    handlers = (scan_accessed_pages, reset_accessed_window, walk_shadow_pagetables, hexdump_memory)
    for _ in range(600):
        fn = rng.choice(handlers)
        args = [rng.choice(tokens) for _ in range(rng.randint(0, 4))]
        out = Out()
        try:
            fn(machine, out, tuple(args))
        except KeyhandlerError as e:
            msg = str(e)
            assert msg and "\n" not in msg, (fn.__name__, args, msg)
            assert out == [], (fn.__name__, args, out)  # the error is the only line
        else:
            assert all(isinstance(x, str) and "\n" not in x for x in out)
    assert scan_domain(machine, dom, 0x100, 0x7FF).nr_accessed == 20
    machine.destroy_domain(dom)


def test_a_paused_domain_runs_no_more_slices():
    """`Z` then `U` on a paused guest relies on it: a vCPU paused while it waits in the run
    queue must not be picked (one pCPU, two spinning guests: each is queued half the time)."""
    m = new_machine(cpus=1)
    try:
        a = create(m, "spin_a", "stream:pages=4", memory=4)
        b = create(m, "spin_b", "stream:pages=4", memory=4)
        for _ in range(10):
            assert wait_for(lambda: b.vcpus[0].cpu_time_ns > 0)
            m.sched.pause_domain(b)
            t = b.vcpus[0].cpu_time_ns
            before = a.vcpus[0].cpu_time_ns
            assert wait_for(lambda b0=before: a.vcpus[0].cpu_time_ns > b0 + 30_000_000)
            assert b.vcpus[0].cpu_time_ns == t and not b.vcpus[0].running
            m.sched.unpause_domain(b)
            assert wait_for(lambda t0=t: b.vcpus[0].cpu_time_ns > t0)
    finally:
        m.shutdown()
