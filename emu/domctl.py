"""Domain lifecycle (XEN_DOMCTL_createdomain / destroydomain / max_mem), as libxl drives it.

Errors are `DomainError` with the one-line message xl would print.
"""

from __future__ import annotations

import re
import uuid
import weakref

import numpy as np

from emu.domain import (
    DOMID_UNLIMITED_MAX_PAGES,
    VM_ASSIST_HVM,
    VM_ASSIST_PV,
    Domain,
    VcpuRecord,
    empty_p2m,
)
from emu.host import DomainSpec
from emu.hvm import XEN_ENTRY_PAGES
from emu.mm.memory import populate_physmap
from emu.mm.p2m import p2m_remove_entries
from emu.mm.page import INVALID_MFN
from emu.mm.page_info import PGC_allocated, PGC_xen_heap, PGT_validated, PGT_writable_page
from emu.shadow.pool import default_pool_pages
from emu.shutdown import validate as shutdown_actions
from emu.workload import validate_workload

LIBXL_MAXMEM_CONSTANT_KB = 1024  # libxl adds this to max_pages (libxl__arch_extra_memory)
MAX_VCPUS = 128
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-~]{0,63}$")  # ~: XTF's test~variation names


class DomainError(Exception):
    """A refused domain operation; str() is the message for the user."""


def max_pages_for_kb(kb: int) -> int:
    return min((kb + LIBXL_MAXMEM_CONSTANT_KB) // 4, DOMID_UNLIMITED_MAX_PAGES)


def share_xen_page(machine, dom: Domain) -> int | None:
    """A Xen-heap page shared with the domain (its shared_info): XenPage in `q`."""
    mfn = machine.heap.alloc_xenheap_pages(0)
    if mfn is None:
        return None
    ft = machine.frames
    ft.count_info[mfn] = PGC_xen_heap | PGC_allocated | 1
    ft.type_info[mfn] = PGT_writable_page | PGT_validated | 1
    ft.v[mfn] = dom.domid + 1
    dom.xenheap_pages += 1
    dom.xenpage_mfns.append(mfn)
    return mfn


def guest_overhead_pages(machine, dom: Domain) -> int:
    """Frames a domU needs besides its memory once the guest subsystems run it."""
    if machine.hvm is None:
        return 0  # the memory model alone: no guest, no shadow pool
    return default_pool_pages(dom) + XEN_ENTRY_PAGES  # XenPages: once per machine, at worst now


def validate_spec(machine, spec: DomainSpec) -> None:
    if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
        raise DomainError(f"Invalid domain name: {spec.name!r}")
    if spec.name == "Domain-0" or any(d.name == spec.name for d in machine.domains.values()):
        raise DomainError(
            f"libxl: error: libxl_domain.c:81:libxl__domain_rename: Domain with name "
            f'"{spec.name}" already exists.'
        )
    if not isinstance(spec.memory, int) or spec.memory <= 0:
        raise DomainError(f"Invalid memory size: {spec.memory} (MiB, must be positive)")
    if spec.maxmem is not None and (not isinstance(spec.maxmem, int) or spec.maxmem <= 0):
        raise DomainError(f"Invalid maxmem size: {spec.maxmem} (MiB, must be positive)")
    if spec.maxmem is not None and spec.maxmem < spec.memory:
        raise DomainError("xl: maxmem must be greater than or equal to memory")
    if spec.memory > machine.host.memory >> 20:
        raise DomainError("failed to free memory for the domain")
    if not isinstance(spec.vcpus, int) or not 1 <= spec.vcpus <= MAX_VCPUS:
        raise DomainError(f"Invalid vcpus: {spec.vcpus} (must be 1..{MAX_VCPUS})")
    problem = validate_workload(spec)  # the guest builder's fit check
    if problem:
        raise DomainError(problem)
    try:
        shutdown_actions(machine, spec)  # on_poweroff/on_reboot/on_crash/...
    except ValueError as e:
        raise DomainError(str(e)) from None
    for check in list(machine.hooks.domain_validate):
        try:
            check(machine, spec)
        except DomainError:
            raise
        except ValueError as e:
            raise DomainError(str(e)) from None


def create_domain(machine, spec: DomainSpec, paused: bool = False) -> Domain:
    """Create, populate gfns 0..N-1, run the domain_created hooks. All or nothing.

    `paused` (xl create -p) leaves the domain with pause_count 1.
    """
    with machine.lock:
        validate_spec(machine, spec)
        pages = spec.memory << 8
        maxmem = spec.maxmem if spec.maxmem is not None else spec.memory
        dom = Domain(machine.next_domid, spec.name, handle=spec.uuid or str(uuid.uuid4()))
        dom.vm_assist = VM_ASSIST_HVM
        dom.spec = spec
        dom.max_pages = max_pages_for_kb(maxmem << 10)
        dom.static_max_kb = maxmem << 10
        dom.target_pages = pages
        dom.pause_count = 1 if paused else 0
        ncpu = machine.host.cpus
        dom.vcpus = [VcpuRecord(i, processor=i % ncpu, blocked=True) for i in range(spec.vcpus)]
        # libxl_domain_need_memory(): the memory, the shared_info page and, when guests run
        # under shadow paging, the shadow pool and Xen's guest-entry frames.
        if machine.heap.total_avail_pages < pages + 1 + guest_overhead_pages(machine, dom):
            raise DomainError("failed to free memory for the domain")
        machine.next_domid += 1
        domid = dom.domid
        machine.domains[domid] = dom
        hooks_ran = False
        try:
            if share_xen_page(machine, dom) is None:
                raise DomainError("failed to free memory for the domain")
            if populate_physmap(machine, dom, np.arange(pages)) is None:
                raise DomainError("failed to free memory for the domain")
            hooks_ran = True
            for hook in list(machine.hooks.domain_created):
                hook(dom)
        except Exception as e:
            if hooks_ran:
                dom.is_dying = 1
                for hook in list(machine.hooks.domain_destroying):
                    try:
                        hook(dom)
                    except Exception:  # already failing; free what we can
                        pass
            _teardown(machine, dom)
            if isinstance(e, DomainError):
                raise
            raise DomainError(f"libxl: error: cannot create domain {spec.name}: {e}") from e
        return dom


def build_dom0_memory(machine, pages: int) -> Domain:
    """Domain 0: PV, `dom0_mem` pages, unlimited max_pages (no `dom0_mem=...,max:`)."""
    dom0 = Domain(0, "Domain-0", vm_assist=VM_ASSIST_PV)
    dom0.max_pages = DOMID_UNLIMITED_MAX_PAGES
    dom0.static_max_kb = machine.host.memory >> 10
    dom0.target_pages = pages
    machine.domains[0] = dom0
    share_xen_page(machine, dom0)
    if populate_physmap(machine, dom0, np.arange(pages)) is None:
        raise DomainError("Dom0 memory allocation failed")
    return dom0


def _teardown(machine, dom: Domain) -> None:
    """Free everything a domain holds and forget it (relinquish_resources + destroy)."""
    with machine.heap.lock:
        ft = machine.frames
        gfns = np.flatnonzero(dom.p2m != INVALID_MFN)
        if len(gfns):
            p2m_remove_entries(machine, dom, gfns)
        owned = ft.owned_by(dom.domid)  # page list from the owner field
        dom.tot_pages -= len(owned)
        machine.heap.free_runs(owned, need_scrub=True)
        xen = np.array(dom.xenpage_mfns, dtype=np.int64)
        dom.xenpage_mfns.clear()
        dom.xenheap_pages -= len(xen)
        machine.heap.free_runs(xen, need_scrub=True)
        dom.is_dying = 2
        machine.domains.pop(dom.domid, None)
    release_domain(dom)


def release_vcpus(dom: Domain) -> None:
    """Each vCPU's Unicorn instance goes now, and its link back to the domain becomes weak
    (vCPU <-> domain is a cycle). Only once no pCPU will run them again (destroyed, or the
    machine stopped)."""
    for v in dom.vcpus:
        release = getattr(v, "release", None)
        if release is not None:
            release()


def release_domain(dom: Domain) -> None:
    """Drop what a dead domain holds now rather than when the collector runs: each vCPU's
    Unicorn instance (and the hooks and callbacks that tie it to the vCPU), the
    vCPU <-> domain links, and the per-domain arrays. Whatever still refers to the Domain
    afterwards (a client's console, a key's snapshot) keeps only a small record."""
    release_vcpus(dom)
    paging = dom.paging  # torn down by the domain_destroying hooks; kept for inspection
    if paging is not None and getattr(paging, "dom", None) is dom:
        paging.dom = weakref.proxy(dom)  # its link back would make a cycle with dom.paging
    dom.p2m = empty_p2m()
    dom.reserved_gfns = set()


def destroy_domain(machine, dom: Domain) -> None:
    if dom.domid == 0:
        raise DomainError("Not destroying domain 0")
    with machine.lock:
        if machine.domains.get(dom.domid) is not dom:
            raise DomainError(f"domain {dom.domid} does not exist")
        dom.is_dying = 1
        for hook in list(machine.hooks.domain_destroying):
            hook(dom)
        _teardown(machine, dom)


def set_max_pages(machine, dom: Domain, pages: int) -> None:
    """XEN_DOMCTL_max_mem: may go below tot_pages (then allocations are refused)."""
    with machine.lock:
        dom.max_pages = max(0, min(int(pages), DOMID_UNLIMITED_MAX_PAGES))
