"""`a`: dump timer queues (xen/common/timer.c:672-697 dump_timerq(), registered at :701).

The timers this machine keeps are the vCPUs' singleshot timers (set_timer_op), each queued
on the pCPU its vCPU runs on. Xen's line is `  ex=%12ldus timer=%p cb=%ps(%p)`; Xen is not
x86 code here, so there are no addresses: the callback is followed by its vCPU instead
(docs/differences.md), and the hypervisor's own timers are not listed.
"""

from __future__ import annotations

from keyhandlers import keyhandler


@keyhandler("a", "dump timer queues", diagnostic=True)
def dump_timerq(machine, out, args) -> None:
    now = machine.now()
    out("Dumping timer queues:")
    per_cpu: dict[int, list[tuple[int, str]]] = {c: [] for c in range(machine.host.cpus)}
    with machine.lock:
        doms = machine.domain_list()
    for dom in doms:
        for v in dom.vcpus:
            wake = getattr(v, "wake_at", None)
            if wake is not None:
                per_cpu.setdefault(v.processor, []).append((wake, f"d{dom.domid}v{v.vcpu_id}"))
    for cpu in sorted(per_cpu):
        out(f"CPU{cpu:02d}:")
        for wake, name in sorted(per_cpu[cpu]):
            d = wake - now
            us = d // 1000 if d >= 0 else -(-d // 1000)  # C's division truncates to zero
            out(f"  ex={us:12d}us cb=vcpu_singleshot_timer_fn({name})")
