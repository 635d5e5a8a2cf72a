"""`O`: audit the frame table, heap, P2M/M2P and shadow pools now and print the result.

(Xen's own `O`, in debug builds, is "toggle shadow audits": it flips shadow_audit_enable so
that later shadow operations audit themselves. Here the audit runs once, at once.)

Output:
    'O' pressed -> auditing frame table and shadows (now = <ns>)
    audit: frames=<n> free=<n> xen=<n> domain=<n> shadow=<n>
    audit: d<id> owns <n> frames[, shadow pool <n> frames]    (one line per domain)
    audit: consistent                                          or
    audit: violation: <what>                                   (at most MAX_LINES)
    audit: <n> violation(s)
"""

from __future__ import annotations

from keyhandlers import keyhandler

MAX_LINES = 20


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
    if r.ok:
        lines.append("audit: consistent")
    else:
        for v in r.violations[:MAX_LINES]:
            lines.append(f"audit: violation: {v}")
        if len(r.violations) > MAX_LINES:
            lines.append(f"audit: ... {len(r.violations) - MAX_LINES} more not shown")
        lines.append(f"audit: {len(r.violations)} violation(s)")
    return lines


@keyhandler("O", "audit frame table, heap, P2M/M2P and shadow pools")
def audit_key(machine, out, args) -> None:
    out(f"'O' pressed -> auditing frame table and shadows (now = {machine.now()})")
    for line in audit_lines(machine):
        out(line)
