"""`O` (keyhandlers/audit.py): Xen 4.22's shadow audit toggle, audits after each fault while on."""

from __future__ import annotations

from guest_helpers import create, press, wait_for


def test_O_audits_after_each_fault_while_on(m):
    """O on: the shadow fault path audits the domain's shadows afterwards; a broken shadow
    entry is caught by the next fault (multi.c:2607-2609 call shadow_audit_tables())."""
    assert press(m, "O") == ["shadow_audit_key shadow_audit_enable=1"]
    try:
        dom = create(m, "aud", "touch:pages=64,write=1")
        assert wait_for(lambda: dom.paging is not None and len(dom.paging.l1s) > 0)
        assert dom.domid in m.domains  # clean shadows pass every audit
    finally:
        assert press(m, "O") == ["shadow_audit_key shadow_audit_enable=0"]
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
