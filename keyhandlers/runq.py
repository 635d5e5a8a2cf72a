"""`r`: dump run queues (sched/cpupool.c dump_runq(), core.c schedule_dump(), credit2.c).

The emulated host runs credit2 with one runqueue for all pCPUs, which is what the scheduler
in emu/cpu/sched.py is: one shared queue, pCPU threads taking vCPUs from it. Credits and loads
are derived from each vCPU's measured run time: credit counts down CSCHED2_CREDIT_INIT
(10 ms) of run time per reset, load is the share of wall time the vCPU ran since the
previous `r` (since it was created, the first time), in credit2's fixed point (shift 18).
"""

from __future__ import annotations

import time

from keyhandlers import keyhandler
from keyhandlers.domain import cpulist

CSCHED2_DEFAULT_WEIGHT = 256
CSCHED2_CREDIT_INIT = 10_000_000
LOAD_SHIFT = 18
CSFLAG_scheduled = 1 << 1
SCHEDULER_NAME = "SMP Credit Scheduler rev2 (credit2)"


def _bitmap(cpus) -> str:
    """`%*pb`: a cpumask as hex."""
    v = 0
    for c in cpus:
        v |= 1 << c
    return f"{v:x}"


def _vname(v) -> str:
    return "NULL" if v is None else f"d{v.domain.domid}v{v.vcpu_id}"


class _Loads:
    """Per-vCPU (wall, cpu time) samples between presses of `r`."""

    def __init__(self) -> None:
        self.samples: dict[int, tuple[int, int]] = {}

    def load(self, v) -> int:
        now = time.monotonic_ns()
        since = v.runstate_since
        t0, c0 = self.samples.get(id(v), (since, 0))
        self.samples[id(v)] = (now, v.cpu_time_ns)
        wall = max(1, now - t0)
        return min(1 << LOAD_SHIFT, ((v.cpu_time_ns - c0) << LOAD_SHIFT) // wall)


_loads = _Loads()


def _unit(v, running: bool, cpu: int, loads: dict, owner: dict) -> str:
    credit = CSCHED2_CREDIT_INIT - (v.cpu_time_ns % CSCHED2_CREDIT_INIT)
    load = loads.get(id(v), 0)
    flags = CSFLAG_scheduled if running else 0
    return (
        f"[{owner.get(id(v), 0)}.{v.vcpu_id}] flags={flags:x} "
        f"cpu={cpu} credit={credit} [w={CSCHED2_DEFAULT_WEIGHT}] "
        f"load={load} (~{(load * 100) >> LOAD_SHIFT}%)"
    )


@keyhandler("r", "dump run queues", diagnostic=True)
def dump_runq(machine, out, args) -> None:
    ncpu = machine.host.cpus
    cpus = list(range(ncpu))
    sched = machine.sched
    out("sched_smt_power_savings: disabled")
    out(f"NOW={machine.now()}")
    out(f"Online Cpus: {cpulist(cpus)}")
    out("Cpupool 0:")
    out(f"Cpus: {cpulist(cpus)}")
    out("Scheduling granularity: cpu, 1 CPU per sched-resource")
    out(f"Scheduler: {SCHEDULER_NAME}")
    doms = machine.domain_list()
    owner = {id(v): d.domid for d in doms for v in d.vcpus}  # dom0's records lack .domain
    lock = sched.cond if sched is not None else None
    if lock is not None:
        lock.acquire()
    try:
        current = [sched.current_on(c) if sched else None for c in cpus]
        prev = [sched.pcpus[c].prev if sched else None for c in cpus]
        runq = sched.runq_snapshot() if sched else []
        units = [v for d in doms for v in d.vcpus]
        loads = {id(v): _loads.load(v) for v in units}
        running = {id(v): c for c, v in enumerate(current) if v is not None}
        idle = [c for c in cpus if current[c] is None]
        instload = len(running) + len(runq)
        aveload = sum(loads.values())
        out("Active queues: 1")
        out(f"\tdefault-weight     = {CSCHED2_DEFAULT_WEIGHT}")
        out("Runqueue 0:")
        out(f"\tncpus              = {ncpu}")
        out(f"\tcpus               = {cpulist(cpus)}")
        out(f"\tmax_weight         = {CSCHED2_DEFAULT_WEIGHT}")
        out("\tpick_bias          = 0")
        out(f"\tinstload           = {instload}")
        out(f"\taveload            = {aveload} (~{(aveload * 100) >> LOAD_SHIFT}%)")
        out(f"\tidlers: {_bitmap(idle)}")
        out("\ttickled: 0")
        out(f"\tfully idle cores: {_bitmap(idle)}")
        out("Domain info:")
        n = 0
        for d in doms:
            out(f"\tDomain: {d.domid} w {CSCHED2_DEFAULT_WEIGHT} c 0 v {len(d.vcpus)}")
            for v in d.vcpus:
                n += 1
                cpu = running.get(id(v), v.processor)
                out(f"\t{n:3d}: " + _unit(v, id(v) in running, cpu, loads, owner))
        out("Runqueue 0:")
        for c in cpus:
            # `xl info`: one socket, one thread per core, core i = CPU i; so each CPU's
            # siblings are itself and its cpu_core_mask (the socket) is every CPU.
            out(f"CPU[{c:02d}] runq=0, sibling={{{c}}}, core={{{cpulist(cpus)}}}")
            if current[c] is not None:
                out("\trun: " + _unit(current[c], True, c, loads, owner))
        out("RUNQ:")
        for i, v in enumerate(runq):
            out(f"\t{i:3d}: " + _unit(v, False, v.processor, loads, owner))
        out("CPUs info:")
        for c in cpus:
            cur = _vname(current[c]) if current[c] is not None else f"d[IDLE]v{c}"
            pv = _vname(prev[c]) if prev[c] is not None else f"d[IDLE]v{c}"
            out(f"CPU[{c:02d}] current={cur}, curr={cur}, prev={pv}")
    finally:
        if lock is not None:
            lock.release()
