"""`e`: dump evtchn info (xen/common/event_channel.c:1737-1806, registered at :1810).

Our HVM domUs bind no event channel, so each prints its header alone. Dom0 runs no kernel
on this machine (docs/differences.md): the channels its kernel would bind are not modelled,
and one line says so where Xen would list them.
"""

from __future__ import annotations

from keyhandlers import keyhandler
from keyhandlers.domain import cpulist


def _poll_mask(dom) -> str:
    """`%*pbl` of d->poll_mask: vCPUs blocked in SCHEDOP_poll (none do here)."""
    return cpulist(v.vcpu_id for v in dom.vcpus if getattr(v, "poll_evtchn", 0))


@keyhandler("e", "dump evtchn info", diagnostic=True)
def dump_evtchn_info(machine, out, args) -> None:
    out("'e' pressed -> dumping event-channel info")
    with machine.lock:
        doms = machine.domain_list()
    for dom in doms:
        out(f"Event channel information for domain {dom.domid}:")
        out(f"Polling vCPUs: {{{_poll_mask(dom)}}}")
        out("    port [p/m/s]")
        if dom.domid == 0:
            out("    (dom0 runs no kernel here: its event channels are not modelled)")
