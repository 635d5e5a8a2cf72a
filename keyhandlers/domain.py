"""`q`: dump domain info (xen/common/keyhandler.c dump_domains(), x86 dump_pageframe_info())."""

from __future__ import annotations

from keyhandlers import keyhandler

VIRQ_DEBUG = 1
_VPF_blocked = 1  # 1UL << _VPF_blocked (xen/include/xen/sched.h)
_VPF_down = 2  # 1UL << _VPF_down: a PV vCPU not yet brought up (VCPUOP_up)
DOMDYING_dead = 2
ECS_VIRQ = 4  # xen/include/xen/sched.h evtchn states


def cpulist(cpus) -> str:
    """`%*pbl`: 0-3,5,7-8."""
    cpus = sorted(set(cpus))
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def _rangesets(dom) -> list[tuple[str, str]]:
    # Every domain has a host p2m with its "log-dirty" rangeset (x86/mm/p2m-basic.c:89,
    # p2m_init_hostp2m(), PV dom0 included), never populated here.
    if dom.domid == 0:
        return [
            ("Interrupts", "{ 1-51, 56-1023 }"),
            ("I/O Memory", "{ 0-febff, fec01-fedff, fee01-ffffffffffffffff }"),
            ("I/O Ports", "{ 0-1f, 22-3f, 44-60, 62-9f, a2-cfb, d00-ffff }"),
            ("log-dirty", "{ }"),
        ]
    return [
        ("Interrupts", "{ }"),
        ("I/O Memory", "{ }"),
        ("I/O Ports", "{ }"),
        ("log-dirty", "{ }"),
    ]


def _page_line(kind: str, ft, mfn: int) -> str:
    return (
        f"    {kind} {mfn:016x}: caf={int(ft.count_info[mfn]):08x}, "
        f"taf={int(ft.type_info[mfn]):016x}"
    )


def dump_pageframe_info(machine, dom, out) -> None:
    from emu.mm.page_info import PGT_none, PGT_type_mask, PGT_writable_page

    ft = machine.frames
    out(f"Memory pages belonging to domain {dom.domid}:")
    nr = dom.tot_pages - dom.extra_pages
    if nr >= 10 and dom.is_dying < DOMDYING_dead:
        out("    DomPage list too long to display")
    else:
        seen: dict[int, int] = {}
        for mfn in ft.owned_by(dom.domid).tolist():
            t = int(ft.type_info[mfn]) & PGT_type_mask
            seen[t] = seen.get(t, 0) + 1
            if seen[t] > 16 and t in (PGT_none, PGT_writable_page):
                continue
            out(_page_line("DomPage", ft, mfn))
    if dom.is_hvm:
        out("    PoD entries=0 cachesize=0")
    for mfn in list(dom.xenpage_mfns):
        out(_page_line("XenPage", ft, mfn))


def paging_words(paging) -> str:
    """paging_dump_domain_info(): our domUs run shadow-mode HVM (translated, external; no
    log-dirty mode is ever enabled)."""
    return "shadow refcounts translate external "


def dump_domain(machine, dom, out) -> None:
    ncpu = machine.host.cpus
    out(f"General information for domain {dom.domid}:")
    out(f"    refcnt={dom.refcnt} dying={dom.is_dying} pause_count={dom.pause_count}")
    dirty = [v.processor for v in dom.vcpus if v.running]
    out(
        f"    nr_pages={dom.tot_pages - dom.extra_pages} xenheap_pages={dom.xenheap_pages} "
        f"dirty_cpus={{{cpulist(dirty)}}} max_pages={dom.max_pages}"
    )
    out(f"    handle={dom.handle} vm_assist={dom.vm_assist:08x}")
    if dom.paging is not None:
        out(f"    paging assistance: {paging_words(dom.paging)}")
    out(f"Rangesets belonging to domain {dom.domid}:")
    for name, ranges in _rangesets(dom):
        out(f"    {name:<10} {ranges}")
    dump_pageframe_info(machine, dom, out)
    out(f"NODE affinity for domain {dom.domid}: [0]")
    out(f"VCPU information and callbacks for domain {dom.domid}:")
    for v in dom.vcpus:
        aff = cpulist(range(ncpu))
        out(f"  UNIT{v.vcpu_id} affinities: hard={{{aff}}} soft={{{aff}}}")
        running = v.running
        # upcall_mask is !vcpu_event_delivery_is_enabled(v) (keyhandler.c:333-337): 0 or 1.
        mask = 1 if getattr(v, "upcall_mask", 0) else 0
        line = (
            f"    VCPU{v.vcpu_id}: CPU{v.processor} [has={'T' if running else 'F'}] "
            f"poll={v.poll_evtchn} upcall_pend={getattr(v, 'upcall_pend', 0):02x} "
            f"upcall_mask={mask:02x} "
        )
        if running:
            line += f"dirty_cpu={v.processor}"
        out(line)
        # A vCPU that is down (never brought up, or VCPUOP_down) has only VPF_down: our
        # records also call it blocked, which Xen's pause_flags would not.
        flags = _VPF_down if v.down else _VPF_blocked if v.blocked else 0
        out(f"    pause_count={v.pause_count} pause_flags={flags:x}")
        if dom.paging is not None:
            out("    paging assistance: shadowed 4-on-4")
        out("No periodic timer")


def debug_port(dom, v) -> int:
    """v->virq_to_evtchn[VIRQ_DEBUG]: dom0's kernel binds one per vCPU; a PV domU's port if
    its guest bound the VIRQ; 0 (unbound) otherwise."""
    if dom.domid == 0:
        return 7 + 6 * v.vcpu_id
    pv = getattr(dom, "pv", None)
    if pv is None:
        return 0
    for port, ch in sorted(pv.evtchn.ports.items()):
        if ch.state == ECS_VIRQ and ch.virq == VIRQ_DEBUG and ch.vcpu == v.vcpu_id:
            return port
    return 0


@keyhandler("q", "dump domain (and guest debug) info", diagnostic=True)
def dump_domains(machine, out, args) -> None:
    out(f"'q' pressed -> dumping domain info (now = {machine.now()})")
    with machine.lock:
        doms = machine.domain_list()
        for dom in doms:
            dump_domain(machine, dom, out)
        for dom in doms:
            for v in dom.vcpus:
                out(
                    f"Notifying guest {dom.domid}:{v.vcpu_id} "
                    f"(virq {VIRQ_DEBUG}, port {debug_port(dom, v)})"
                )
