"""`O`: Xen's "toggle shadow audits"; `F`: our one-shot audit of the whole machine.

`O` (xen/arch/x86/mm/shadow/common.c:128-143, debug builds: SHADOW_AUDIT 0x15) flips
`shadow_audit_enable`; while it is on, every shadow fault and CR3 load audits the faulting
domain's shadows afterwards (emu/shadow/multi.py), as sh_page_fault() calls
shadow_audit_tables().

`F` is ours (the letter is free in Xen 4.22's table, arch keys included): audit the frame
table, heap, P2M/M2P and shadow pools now and print the result:
    'F' pressed -> auditing frame table and shadows (now = <ns>)
    audit: frames=<n> free=<n> xen=<n> domain=<n> shadow=<n>
    audit: d<id> owns <n> frames[, shadow pool <n> frames]    (one line per domain)
    audit: d<id> shadow pool: total=<n> free=<n> in use=<n> (<MB>MB)   (shadowed domains)
    audit: consistent                                          or
    audit: violation: <what>                                   (at most MAX_LINES)
    audit: <n> violation(s)
"""

from __future__ import annotations

from keyhandlers import keyhandler

MAX_LINES = 20


def pool_lines(machine) -> list[str]:
    """The shadow pool of each shadowed domain (what Xen's `q` does not print)."""
    lines = []
    with machine.lock:
        doms = machine.domain_list()
    for dom in doms:
        sd = dom.paging
        if sd is None:
            continue
        tot, free = sd.total_pages, sd.free_pages
        lines.append(
            f"audit: d{dom.domid} shadow pool: total={tot} free={free} in use={tot - free} "
            f"({-(-tot // 256)}MB)"
        )
    return lines


def audit_lines(machine) -> list[str]:
    from emu.audit import audit_full

    r = audit_full(machine)  # quiesces the vCPUs itself
    lines = [
        f"audit: frames={r.nr_frames} free={r.free} xen={r.xen} "
        f"domain={sum(r.domain.values())} shadow={sum(r.shadow.values())}"
    ]
    for domid in sorted(r.domain):
        pool = f", shadow pool {r.shadow[domid]} frames" if domid in r.shadow else ""
        lines.append(f"audit: d{domid} owns {r.domain[domid]} frames{pool}")
    lines += pool_lines(machine)
    if r.ok:
        lines.append("audit: consistent")
    else:
        for v in r.violations[:MAX_LINES]:
            lines.append(f"audit: violation: {v}")
        if len(r.violations) > MAX_LINES:
            lines.append(f"audit: ... {len(r.violations) - MAX_LINES} more not shown")
        lines.append(f"audit: {len(r.violations)} violation(s)")
    return lines


@keyhandler("F", "audit frame table, heap, P2M/M2P and shadow pools")
def audit_key(machine, out, args) -> None:
    out(f"'F' pressed -> auditing frame table and shadows (now = {machine.now()})")
    for line in audit_lines(machine):
        out(line)


@keyhandler("O", "toggle shadow audits")
def shadow_audit_key(machine, out, args) -> None:
    """shadow_audit_key(): no "'O' pressed" line, just the new state."""
    machine.shadow_audit_enable = not machine.shadow_audit_enable
    out(f"shadow_audit_key shadow_audit_enable={int(machine.shadow_audit_enable)}")
