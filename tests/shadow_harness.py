"""A small real-Unicorn guest for the shadow tests (no scheduler, no guest kernel).

One machine, one bare domain (the machine's domain_created hooks are not run, so no guest
builder starts), its own 4-level identity-mapped tables in guest frames, and one vCPU: a
Uc over machine RAM whose #PF / #DB hook calls the domain's shadow code, as GUEST's vCPU
does. Guest code runs at CPL 0 here (the shadows force _PAGE_USER either way).
"""

from __future__ import annotations

import numpy as np
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR2,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_MSR,
    UC_X86_REG_RIP,
    UC_X86_REG_RSP,
)

from emu.asm import assemble
from emu.audit import audit
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine
from emu.shadow.audit import audit_shadows
from emu.shadow.common import shadow_enable
from emu.shadow.multi import shadow_l1e_index
from emu.shadow.private import CRASH, FIXED, GUEST_FAULT

P, RW, US, A, D, PS, NX = 1, 2, 4, 0x20, 0x40, 0x80, 1 << 63
CODE_GFN = 0x10
STACK_GFN = 0x30
PT_GFN = 0x40  # L4, L3, L2, then the L1s
ARENA_GFN = 0x100


from emu.cpu.ucctx import ack_exception  # noqa: E402  (the vCPUs' own; docs/design.md)


def asm(src: str, addr: int) -> bytes:
    """`src` assembled at `addr` by the guests' own assembler (emu/asm.py: GNU as)."""
    return assemble(src, addr, 1 << 20)


class HarnessVCPU:
    """vCPU shape of emu/cpu/vcpu.py (vcpu_id, processor, uc, flush_tlb) for the tests."""

    def __init__(self, dom, vcpu_id: int, ram) -> None:
        self.domain = dom
        self.vcpu_id = vcpu_id
        self.processor = 0
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.mem_map_ptr(0, ram.size, UC_PROT_ALL, ram.ptr)
        self.uc.reg_write(UC_X86_REG_MSR, (0xC0000080, 0xD01))  # EFER SCE|LME|LMA|NXE
        self.uc.reg_write(UC_X86_REG_CR4, self.uc.reg_read(UC_X86_REG_CR4) | 0x20)
        self.events: list[tuple[str, int, int]] = []  # (result, va, ec) of non-FIXED faults
        self.faults = 0
        self.tlb_flushes = 0
        self.uc.hook_add(UC_HOOK_INTR, self._intr)

    def flush_tlb(self) -> None:
        self.tlb_flushes += 1
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def load_cr3(self, guest_cr3: int) -> None:
        self.guest_cr3 = guest_cr3
        self.uc.reg_write(UC_X86_REG_CR3, self.domain.paging.update_cr3(self, guest_cr3))
        self.uc.reg_write(UC_X86_REG_CR0, 0x80010001)

    def _intr(self, uc, vec, _data) -> None:
        ec = ack_exception(uc)
        if vec == 14:
            self.faults += 1
            va = uc.reg_read(UC_X86_REG_CR2)
            r = self.domain.paging.page_fault(self, va, ec)
            if r == FIXED:
                return
            name = {GUEST_FAULT: "guest", CRASH: "crash"}[r]
            self.events.append((name, va, self.domain.paging.fault_error_code(self)))
        elif vec == 1 and self.domain.paging.debug_trap(self):
            return
        else:
            self.events.append((f"vec{vec}", uc.reg_read(UC_X86_REG_RIP), ec))
        uc.emu_stop()

    def run(self, entry: int, until: int) -> int:
        ack_exception(self.uc)  # a run stopped inside a fault leaves old_exception set
        self.uc.reg_write(UC_X86_REG_RSP, (STACK_GFN + 1) << 12)
        self.uc.emu_start(entry, until)
        return self.uc.reg_read(UC_X86_REG_RIP)


class Guest:
    """A bare domain with identity-mapped 4 KiB page tables built by hand in its frames."""

    def __init__(self, machine: Machine, mem_mb: int = 16, pool_pages: int | None = None,
                 nr_vcpus: int = 1, name: str = "t", pte_flags: int = P | RW) -> None:  # fmt: skip
        self.machine = machine
        saved = machine.hooks.domain_created[:]
        machine.hooks.domain_created.clear()  # a bare domain: no guest builder
        try:
            self.dom = machine.create_domain(DomainSpec(name=name, memory=mem_mb, vcpus=nr_vcpus))
        finally:
            machine.hooks.domain_created[:] = saved
        self.nr_pages = mem_mb << 8
        self.dom.reserved_gfns = set(range(ARENA_GFN))  # code, stack, tables
        self.ram = machine.ram
        self.build_tables(pte_flags)
        shadow_enable(machine, self.dom, pool_pages)
        self.vcpus = [HarnessVCPU(self.dom, i, self.ram) for i in range(nr_vcpus)]
        self.dom.vcpus = self.vcpus  # the shadow code flushes these
        for v in self.vcpus:
            v.load_cr3(PT_GFN << 12)

    def mfn(self, gfn: int) -> int:
        return int(self.dom.p2m[gfn])

    def q(self, gfn: int) -> np.ndarray:
        """The 512 u64 of guest frame `gfn` (through the P2M)."""
        return self.ram.page64(self.mfn(gfn))

    def build_tables(self, flags: int) -> None:
        n_l1 = (self.nr_pages + 511) // 512
        assert n_l1 <= 64
        self.l1_gfns = [PT_GFN + 3 + i for i in range(n_l1)]
        self.q(PT_GFN)[0] = ((PT_GFN + 1) << 12) | P | RW
        self.q(PT_GFN + 1)[0] = ((PT_GFN + 2) << 12) | P | RW
        for i, g in enumerate(self.l1_gfns):
            self.q(PT_GFN + 2)[i] = (g << 12) | P | RW
            gfns = np.arange(i * 512, min((i + 1) * 512, self.nr_pages), dtype=np.uint64)
            self.q(g)[: gfns.size] = (gfns << np.uint64(12)) | np.uint64(flags)

    def pte(self, gfn: int) -> int:
        """The guest L1 entry mapping VA gfn<<12."""
        return int(self.q(self.l1_gfns[gfn >> 9])[gfn & 511])

    def upper(self) -> list[int]:
        return [int(self.q(PT_GFN)[0]), int(self.q(PT_GFN + 1)[0]), int(self.q(PT_GFN + 2)[0])]

    def load(self, src: str, gfn: int = CODE_GFN) -> tuple[int, int]:
        """Assemble at VA gfn<<12, followed by `hlt`; returns (entry, until)."""
        base = gfn << 12
        code = asm(src, base)
        self.ram.write(self.mfn(gfn) << 12, code + b"\xf4")
        for v in self.vcpus:
            v.uc.ctl_flush_tb()  # ctl_remove_cache walks the VA: a #PF there poisons old_exception
        return base, base + len(code)

    def touch(self, start_gfn: int, n: int, stride: int = 1, write: bool = False, vcpu: int = 0):
        op = "mov byte ptr [rsi], 0x5a" if write else "mov al, byte ptr [rsi]"
        src = f"""
            mov rsi, {start_gfn << 12:#x}
            mov rcx, {n}
        lp: {op}
            add rsi, {stride << 12:#x}
            dec rcx
            jnz lp
        """
        entry, until = self.load(src)
        rip = self.vcpus[vcpu].run(entry, until)
        assert rip == until, (hex(rip), self.vcpus[vcpu].events)


def new_machine(memory_mb: int = 256, cpus: int = 2) -> Machine:
    return Machine(HostConfig(memory=memory_mb << 20, cpus=cpus, dom0_mem=64 << 20))


def assert_clean(m: Machine) -> None:
    """Both audits (the machine's and the shadows') find nothing."""
    assert audit(m) == []
    assert audit_shadows(m) == []


def sl1e(g: Guest, gfn: int, vcpu: int = 0) -> int:
    """The shadow L1 entry mapping gfn for the vCPU, 0 if none."""
    i = shadow_l1e_index(g.dom.paging, vcpu, gfn << 12)
    return 0 if i is None else int(g.ram.u64[i])


def arena_ptes(g: Guest, first: int, last: int) -> np.ndarray:
    """The guest's own PTEs for gfns [first, last)."""
    return np.array([g.pte(x) for x in range(first, last)], dtype=np.uint64)
