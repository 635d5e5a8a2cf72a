"""Keys of issue 12 item 16 (`u g e t a A n s`), `h`'s table entries for them, and `O`/`F`:
each line against the Xen 4.22 format it comes from."""

from __future__ import annotations

import re

import pytest
from guest_helpers import create, new_machine, run_key, wait_for

from keyhandlers import KEY_TABLE

# (key, description, diagnostic) as registered in Xen 4.22.
XEN_KEYS = [
    ("u", "dump NUMA info", True),  # common/numa.c:838
    ("g", "print grant table usage", True),  # common/grant_table.c:4461
    ("e", "dump evtchn info", True),  # common/event_channel.c:1810
    ("t", "display multi-cpu clock info", True),  # common/keyhandler.c:57
    ("a", "dump timer queues", True),  # common/timer.c:701
    ("A", "toggle alternative key handling", False),  # common/keyhandler.c:52
    ("n", "NMI statistics", True),  # arch/x86/nmi.c:604
    ("s", "dump softtsc stats", True),  # arch/x86/time.c:3062
    ("O", "toggle shadow audits", False),  # arch/x86/mm/shadow/common.c:140
]


@pytest.fixture(scope="module")
def m():
    machine = new_machine()
    dom = create(machine, "g1", "touch:pages=32", vcpus=2)
    assert wait_for(lambda: machine.perfc.total("calls to shadow_fault") > 32)
    machine.test_dom = dom
    yield machine
    machine.shutdown()


def key(m, k: str) -> list[str]:
    return run_key(KEY_TABLE[k].fn, m)


@pytest.mark.parametrize(("k", "desc", "diag"), XEN_KEYS)
def test_registered_as_xen_registers_them(k, desc, diag):
    assert (KEY_TABLE[k].desc, KEY_TABLE[k].diagnostic) == (desc, diag)


def test_u_numa(m):
    out = key(m, "u")
    # numa.c:765 "'%c' pressed -> dumping numa info (now = %"PRI_stime")"
    assert re.fullmatch(r"'u' pressed -> dumping numa info \(now = \d+\)", out[0])
    # numa.c:770 "NODE%u start->%lu size->%lu free->%lu": the faked node 0 spans all frames
    # (numa.c:653-670); its free pages are the heap's.
    free = int(re.fullmatch(rf"NODE0 start->0 size->{m.ram.nr_frames} free->(\d+)", out[1])[1])
    assert abs(free - m.free_pages()) < 4096  # the guest may still be touching pages
    assert out[2] == "CPU0...1 -> NODE0"  # numa.c:797 "CPU%u...%u -> NODE%d"
    assert out[3] == "Memory location of each domain:"  # numa.c:805
    d0 = m.domains[0]
    # numa.c:811 "%pd (total: %u):" (domain_tot_pages), :825 "    Node %u: %u"
    assert out[4:6] == [f"d0 (total: {d0.tot_pages}):", f"    Node 0: {d0.tot_pages}"]
    assert re.fullmatch(r"d1 \(total: \d+\):", out[6]) and out[7].startswith("    Node 0: ")


def test_g_grant_tables_without_usage(m):
    out = key(m, "g")
    # grant_table.c:4446 "%s [ key '%c' pressed", :4453 "%s ] done"; per domain :4397-4404
    # and :4443 for a table with no pinned entry; grant_table_init() defaults (:108-109).
    per_dom = [
        "      -------- active --------       -------- shared --------",
        "[ref] localdom mfn      pin          localdom gmfn     flags",
        "grant-table for remote d{d} (v1)",
        "  1 frames (64 max), 0 maptrack frames (1024 max)",
        "no active grant table entries",
    ]
    want = ["gnttab_usage_print_all [ key 'g' pressed"]
    for d in (0, 1):
        want += [ln.format(d=d) for ln in per_dom]
    assert out == want + ["gnttab_usage_print_all ] done"]


def test_e_event_channels(m):
    out = key(m, "e")
    # event_channel.c:1803 "'%c' pressed -> dumping event-channel info"; :1744-1746 header.
    assert out == [
        "'e' pressed -> dumping event-channel info",
        "Event channel information for domain 0:",
        "Polling vCPUs: {}",
        "    port [p/m/s]",
        "    (dom0 runs no kernel here: its event channels are not modelled)",
        "Event channel information for domain 1:",
        "Polling vCPUs: {}",
        "    port [p/m/s]",
    ]


def test_t_clock_skew_accumulates(m):
    # keyhandler.c:450-455 "Synced stime skew: max=%luns avg=%luns samples=%u current=%luns"
    # and "Synced cycles skew: max=%lu avg=%lu samples=%u current=%lu".
    stime = r"Synced stime skew: max=(\d+)ns avg=(\d+)ns samples={n} current=(\d+)ns"
    cyc = r"Synced cycles skew: max=(\d+) avg=(\d+) samples={n} current=(\d+)"
    for n in (1, 2):
        out = key(m, "t")
        assert len(out) == 2
        a = re.fullmatch(stime.format(n=n), out[0])
        b = re.fullmatch(cyc.format(n=n), out[1])
        assert a and b
        assert int(a[1]) >= int(a[3]) and int(a[1]) >= int(a[2])


def test_a_timer_queues(m):
    out = key(m, "a")
    # timer.c:680 "Dumping timer queues:", :686 "CPU%02d:", one per online CPU.
    assert out[0] == "Dumping timer queues:"
    cpus = [ln for ln in out if re.fullmatch(r"CPU\d\d:", ln)]
    assert cpus == ["CPU00:", "CPU01:"]
    for ln in out[1:]:
        assert ln in cpus or re.fullmatch(
            r"  ex= *-?\d+us cb=vcpu_singleshot_timer_fn\(d\d+v\d+\)", ln
        )


def test_A_toggles(m):
    # keyhandler.c:511 "'%c' pressed -> using %s key handling"
    assert key(m, "A") == ["'A' pressed -> using alternative key handling"]
    assert key(m, "A") == ["'A' pressed -> using normal key handling"]


def test_n_nmi_stats(m):
    # nmi.c:578-579 "CPU\tNMI" then "%3u\t%3u"; :590 "%pv: NMI neither pending nor masked"
    assert key(m, "n") == [
        "CPU\tNMI",
        "  0\t  0",
        "  1\t  0",
        "d0v0: NMI neither pending nor masked",
    ]


def test_s_softtsc(m):
    # time.c:3017 "TSC marked as reliable, warp = %lu (count=%lu)"; dom0 in default mode is
    # skipped (:3039-3041); "dom%u%s: mode=%d" (:3042) ",khz=%u" (:3046) ",inc=%u" (:3048).
    first = key(m, "s")
    second = key(m, "s")
    n = int(re.fullmatch(r"TSC marked as reliable, warp = 0 \(count=(\d+)\)", first[0])[1])
    assert second[0] == f"TSC marked as reliable, warp = 0 (count={n + 1})"
    assert first[1:] == ["dom1(hvm): mode=0,khz=2994374,inc=1"]


def test_O_audits_after_each_fault_while_on(m):
    """O on: the shadow fault path audits the domain's shadows afterwards; a broken shadow
    entry is caught by the next fault (multi.c:2607-2609 call shadow_audit_tables())."""
    assert key(m, "O") == ["shadow_audit_key shadow_audit_enable=1"]
    try:
        dom = create(m, "aud", "touch:pages=64,write=1")
        assert wait_for(lambda: dom.paging is not None and len(dom.paging.l1s) > 0)
        assert dom.domid in m.domains  # clean shadows pass every audit
    finally:
        assert key(m, "O") == ["shadow_audit_key shadow_audit_enable=0"]
    m.destroy_domain(dom)


def test_O_on_a_broken_shadow_crashes_the_domain_at_the_next_fault():
    """While audits are on, a shadow L1 entry that maps the wrong frame is found by the
    audit run after the next shadow fault (Xen: AUDIT_FAIL + BUG(), multi.c:3832-3845; here
    the violation is printed and the domain alone crashes, docs/differences.md)."""
    from shadow_harness import ARENA_GFN, Guest
    from shadow_harness import new_machine as bare_machine

    from emu.shadow.multi import shadow_l1e_index
    from emu.shadow.private import CRASH, FIXED

    m = bare_machine()
    try:
        lines: list[bytes] = []
        m.console.sinks.append(lines.append)
        g = Guest(m, name="broken")
        g.touch(ARENA_GFN, 4)
        sd, v = g.dom.paging, g.vcpus[0]
        m.shadow_audit_enable = True
        assert sd.page_fault(v, (ARENA_GFN + 8) << 12, 0) == FIXED  # clean: audited, fine
        i1 = shadow_l1e_index(sd, 0, ARENA_GFN << 12)
        sd.mem[i1] = (sd.mem[i1] & 0xFFF) | (g.mfn(ARENA_GFN + 1) << 12)  # wrong frame
        assert sd.page_fault(v, (ARENA_GFN + 9) << 12, 0) == CRASH
        text = b"".join(lines).decode()
        assert "d1v0 shadow audit: d1: Shadow 4-on-4 audit failed at level 1" in text
        assert sd.crash_reason == "shadow audit failed (1 violation(s))"
    finally:
        m.shadow_audit_enable = False
        m.shutdown()


def test_r_core_masks_follow_the_topology_xl_info_reports(m):
    """credit2.c:3809 "CPU[%02d] runq=%d, sibling={%*pbl}, core={%*pbl}" prints
    cpu_sibling_mask and cpu_core_mask; `xl info` says 1 socket, 2 cores, 1 thread per core
    (xenconsole/dom0/xl_info.py), so the siblings are the CPU itself and the core mask is
    the whole socket."""
    out = key(m, "r")
    cpu_lines = [ln for ln in out if ln.startswith("CPU[") and "runq=" in ln]
    assert cpu_lines == [
        "CPU[00] runq=0, sibling={0}, core={0-1}",
        "CPU[01] runq=0, sibling={1}, core={0-1}",
    ]
