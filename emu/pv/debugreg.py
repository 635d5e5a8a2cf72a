"""Debug registers of a 64-bit PV vCPU: Xen's rules for the values, and the breakpoints armed.

The values follow pv/misc-hypercalls.c set_debugreg() (DR0-3 only at guest addresses,
DR4/5 aliases only with CR4.DE clear, DR6/DR7 reserved bits adjusted as debug.c's
x86_adj_dr{6,7}_rsvd(), GD refused, I/O breakpoints only with CR4.DE and kept aside as
`dr7_emul`) and x86_emulate/util-xen.c x86emul_read_dr() (DR7 reads back `dr7 | dr7_emul`).

Xen loads the guest's DR0-3/DR7 into the real debug registers, so the CPU raises #DB. Unicorn
ignores its debug registers, so while the guest's DR7 enables a breakpoint the vCPU carries
hooks that do what the CPU would:
- a data breakpoint (R/W 01 write, 11 read or write) is a memory hook. Unicorn gives memory
  hooks the machine address, so the watched linear bytes are translated through the current
  tables, again after every CR3 load or TLB flush (what the CPU's TLB would hold); a hit is
  a trap, delivered before the next instruction, or one later after a `mov ss`
  (its interrupt shadow holds the #DB back, SDM vol. 3 6.8.3);
- an instruction breakpoint (R/W 00) is a fault before the instruction runs (EFLAGS.RF
  suppresses it once, as on hardware);
- a hit whose delivery point is in Xen (the shadowed instruction was a `syscall`, or raised
  an exception) is dropped: traps.c handle_DB() ignores a #DB in Xen context and leaves the
  guest's DR6 alone. Xen also logs "Hit #DB in Xen context" with its own RIP there; this
  hypervisor has no Xen text address to show, so that line is not printed.
The #DB reaches the guest through its trap table with DR6 merged as debug.c x86_merge_dr6().
I/O breakpoints (R/W 10) are only remembered, as their `dr7_emul` state.
"""

from __future__ import annotations

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import x86_const as X

X86_DR6_DEFAULT, X86_DR7_DEFAULT = 0xFFFF0FF0, 0x400
X86_DR6_ZEROS, X86_DR7_ZEROS = 0x1000, 0xD000  # asm/x86-defns.h:143,158
X86_DR6_BLD, X86_DR6_RTM, X86_DR7_RTM = 1 << 11, 1 << 16, 1 << 11
X86_DR6_BP_MASK = 0xF
DR_GENERAL_DETECT = 0x2000
DR7_ACTIVE_MASK = 0xFF
DR_IO = 2
X86_CR4_DE = 1 << 3
HYPERVISOR_VIRT_END = 0xFFFF880000000000
ENODEV, EINVAL, EPERM = 19, 22, 1
RF = 1 << 16
_LEN = {0: 1, 1: 2, 2: 8, 3: 4}  # DR7 LENn encoding -> bytes


def _features(vcpu) -> tuple[bool, bool]:
    """(rtm, bld) of the domain's CPUID policy."""
    from emu.pv.priv_op import guest_cpuid

    _, b7, c7, _ = guest_cpuid(vcpu, 7, 0)
    return bool(b7 & (1 << 11)), bool(c7 & (1 << 24))


def adj_dr6_rsvd(vcpu, dr6: int) -> int:
    """debug.c:54-72."""
    rtm, bld = _features(vcpu)
    ones = X86_DR6_DEFAULT & ~(X86_DR6_RTM if rtm else 0) & ~(X86_DR6_BLD if bld else 0)
    return (dr6 | ones) & ~X86_DR6_ZEROS


def adj_dr7_rsvd(vcpu, dr7: int) -> int:
    """debug.c:74-88."""
    rtm, _ = _features(vcpu)
    zeros = X86_DR7_ZEROS | (0 if rtm else X86_DR7_RTM)
    return (dr7 & ~zeros) | X86_DR7_DEFAULT


def merge_dr6(vcpu, dr6: int, new: int) -> int:
    """debug.c:35-52: the breakpoint bits are replaced, the others accumulate."""
    dr6 ^= X86_DR6_DEFAULT
    dr6 = (dr6 & ~X86_DR6_BP_MASK) | new
    return adj_dr6_rsvd(vcpu, dr6 ^ X86_DR6_DEFAULT)


class DebugRegs:
    """`v->arch.dr[]`, `dr6`, `dr7`, `pv.dr7_emul`, and the hooks standing in for the CPU."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self.dr = [0, 0, 0, 0]
        self.dr6, self.dr7, self.dr7_emul = X86_DR6_DEFAULT, X86_DR7_DEFAULT, 0
        self.hit = 0  # DR6 breakpoint bits of data breakpoints not yet delivered
        self.shadow = False  # the instruction that hit was a `mov ss`
        self._hooks: list[int] = []
        self._watch: list[tuple[int, int, int, int]] = []  # (bit, start, len, rw)
        self._maddr: list[tuple[int, int, int]] | None = None  # (bit, maddr, len) now
        self._need: tuple[int, bool] = (0, False)  # (memory hook kinds, code hook) in place
        self._exec: dict[int, int] = {}  # address -> DR6 bit

    # ---- set_debugreg / read_dr ------------------------------------------------------------

    def set(self, reg: int, value: int) -> int:
        """set_debugreg() (pv/misc-hypercalls.c:57-157): 0, -EPERM, -EINVAL or -ENODEV."""
        cr4_de = bool(self.vcpu.vcr4 & X86_CR4_DE)
        if reg < 4:
            if not (value < (1 << 47) or value >= HYPERVISOR_VIRT_END):  # breakpoint_addr_ok
                return -EPERM
            self.dr[reg] = value
        elif reg in (4, 6):
            if reg == 4 and cr4_de:
                return -ENODEV
            if value >> 32:
                return -EINVAL
            self.dr6 = adj_dr6_rsvd(self.vcpu, value)
            return 0
        elif reg in (5, 7):
            if reg == 5 and cr4_de:
                return -ENODEV
            if value >> 32:
                return -EINVAL
            value = adj_dr7_rsvd(self.vcpu, value)
            if value & DR_GENERAL_DETECT:
                return -EPERM
            io_enable = 0
            if value & DR7_ACTIVE_MASK:
                for i in range(4):
                    if (value >> (16 + 4 * i)) & 3 == DR_IO:
                        if not cr4_de:
                            return -EPERM
                        io_enable |= value & (3 << (2 * i))
            self.dr7_emul = io_enable
            self.dr7 = value & ~io_enable
        else:
            return -ENODEV
        self.arm()
        return 0

    def get(self, reg: int) -> int | None:
        """x86emul_read_dr() (x86_emulate/util-xen.c:163-201); None: #UD (-ENODEV)."""
        if reg < 4:
            return self.dr[reg]
        if reg in (4, 5) and self.vcpu.vcr4 & X86_CR4_DE:
            return None
        if reg in (4, 6):
            return self.dr6
        if reg in (5, 7):
            return self.dr7 | self.dr7_emul
        return None

    # ---- the CPU's part ----------------------------------------------------------------------

    def arm(self) -> None:
        """Follow DR0-3/DR7 (write_debugreg()): the callbacks read the breakpoint lists as
        they run; the hooks themselves change only when the kinds of hook needed change."""
        self._watch.clear()
        self._exec.clear()
        for i in range(4):
            if not self.dr7 & (3 << (2 * i)):
                continue
            rw, ln = (self.dr7 >> (16 + 4 * i)) & 3, _LEN[(self.dr7 >> (18 + 4 * i)) & 3]
            if rw == 0:
                self._exec[self.dr[i]] = 1 << i
            elif rw != DR_IO:
                start = self.dr[i] & ~(ln - 1)  # the CPU ignores the low address bits
                self._watch.append((1 << i, start, ln, rw))
        self._maddr = None
        kinds = 0
        if self._watch:
            kinds = UC_HOOK_MEM_WRITE
            if any(w[3] == 3 for w in self._watch):
                kinds |= UC_HOOK_MEM_READ
        need = (kinds, bool(self._watch or self._exec))
        if need == self._need:
            return
        self._need = need
        uc = self.vcpu.uc
        for h in self._hooks:
            uc.hook_del(h)
        self._hooks.clear()
        self.hit, self.shadow = 0, False
        if kinds:
            self._hooks.append(uc.hook_add(kinds, self._on_mem))
        if need[1]:
            self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._on_insn))
        # Unicorn compiles the hooks into its translated blocks: drop them, and end this run
        # so that the next instruction is translated afresh.
        uc.ctl_flush_tb()
        self.vcpu.stop(("again",))

    def tlb_changed(self) -> None:
        """CR3 loaded or TLB flushed: translate the watched addresses again when next needed."""
        self._maddr = None

    def _translate(self) -> list[tuple[int, int, int, int]]:
        from emu.pv.guest import GuestFault
        from emu.pv.mm import linear_to_maddr

        ram = self.vcpu.machine.ram
        cr3 = self.vcpu.cr3_mfn() << 12
        out = []
        for bit, start, ln, rw in self._watch:
            try:
                ma = linear_to_maddr(ram.u64, ram.nr_frames, cr3, start, False)
            except GuestFault:
                continue  # not mapped now: nothing can touch it
            out.append((bit, ma, ln, rw))
        self._maddr = out
        return out

    def _on_mem(self, uc, access, addr: int, size: int, value, _ud) -> None:
        watched = self._maddr if self._maddr is not None else self._translate()
        for bit, start, ln, rw in watched:
            if addr < start + ln and start < addr + size and (rw == 3 or access == UC_MEM_WRITE):
                if not self.hit:
                    self.shadow = self._is_mov_ss()
                self.hit |= bit

    def _is_mov_ss(self) -> bool:
        """Is the instruction running `mov ss, r/m` (8E /2, any prefixes)?"""
        from emu.pv import guest
        from emu.pv.guest import GuestFault

        rip = self.vcpu.rr(X.UC_X86_REG_RIP)
        try:
            code = guest.read(self.vcpu, rip, min(15, 0x1000 - (rip & 0xFFF)))
        except GuestFault:
            return False
        i = 0
        while i < len(code) and (
            code[i] in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67) or 0x40 <= code[i] <= 0x4F
        ):
            i += 1
        return i + 1 < len(code) and code[i] == 0x8E and (code[i + 1] >> 3) & 7 == 2

    def _on_insn(self, uc, address: int, size: int, _ud) -> None:
        vcpu = self.vcpu
        if self.hit:
            if self.shadow:  # the instruction after a `mov ss` runs first
                self.shadow = False
                return
            bits, self.hit = self.hit, 0
            self._deliver(bits)
            return
        bit = self._exec.get(address)
        if bit:
            fl = vcpu.rr(X.UC_X86_REG_EFLAGS)
            if fl & RF:
                vcpu.rw(X.UC_X86_REG_EFLAGS, fl & ~RF)
                return
            self._deliver(bit)

    def _deliver(self, bits: int) -> None:
        """handle_DB() for a #DB in guest context: DR6 merged, then pv_inject_DB()."""
        from emu.pv.traps import inject

        vcpu = self.vcpu
        self.dr6 = merge_dr6(vcpu, self.dr6, bits)
        inject(vcpu, 1, None)
        vcpu.stop(("again",))

    def entered_xen(self) -> None:
        """A hit still pending when the guest enters Xen (a `syscall`, an exception) would
        fire in Xen context: handle_DB() drops it (traps.c:2100-2174)."""
        self.hit, self.shadow = 0, False
