"""Register dumps in Xen's format (xen/arch/x86/traps.c: _show_registers(), print_xen_info()).

Used by keys `d` and `0` and by the crash path (`Domain N (vcpu#M) crashed on cpu#K:`).
"""

from __future__ import annotations

from collections.abc import Callable

from emu.version import XEN_VERSION

Out = Callable[[str], None]

# Xen itself is not x86 code on this machine (the hypervisor is Python): a pCPU in Xen has
# no host registers to show, and dom0 (the console shell) has no emulated CPU.
NO_HOST_STATE = "(Xen is not x86 code here: CPU{cpu} has no host registers to show)"
NO_DOM0_STATE = "(d0v{vcpu} has no emulated CPU: dom0 runs no kernel here)"


def xen_info_line(machine) -> str:
    debug = "y" if machine.debug_build else "n"
    return f"----[ Xen-{XEN_VERSION}  x86_64  debug={debug}  Not tainted ]----"


def show_registers(
    out: Out, r: dict, context: str, vname: str | None, symbol: str = "", em: int | None = None
) -> None:
    """_show_registers(): the block from `RIP:` to the segment line (`EM:` for PV vCPUs)."""
    rip = f"RIP:    {r['cs']:04x}:[<{r['rip']:016x}>]"
    out(rip + (f" {symbol}" if symbol else ""))
    em_text = "" if em is None else f"EM: {em}   "
    ctx = f"CONTEXT: {context}" + (f" ({vname})" if vname else "")
    out(f"RFLAGS: {r['rflags']:016x}   {em_text}{ctx}")
    g = r.get
    out(f"rax: {g('rax', 0):016x}   rbx: {g('rbx', 0):016x}   rcx: {g('rcx', 0):016x}")
    out(f"rdx: {g('rdx', 0):016x}   rsi: {g('rsi', 0):016x}   rdi: {g('rdi', 0):016x}")
    out(f"rbp: {g('rbp', 0):016x}   rsp: {g('rsp', 0):016x}   r8:  {g('r8', 0):016x}")
    out(f"r9:  {g('r9', 0):016x}   r10: {g('r10', 0):016x}   r11: {g('r11', 0):016x}")
    out(f"r12: {g('r12', 0):016x}   r13: {g('r13', 0):016x}   r14: {g('r14', 0):016x}")
    out(f"r15: {g('r15', 0):016x}   cr0: {g('cr0', 0):016x}   cr4: {g('cr4', 0):016x}")
    out(f"cr3: {g('cr3', 0):016x}   cr2: {g('cr2', 0):016x}")
    out(f"fsb: {g('fs_base', 0):016x}   gsb: {g('gs_base', 0):016x}   gss: {g('gss', 0):016x}")
    out(
        f"ds: {g('ds', 0):04x}   es: {g('es', 0):04x}   fs: {g('fs', 0):04x}   "
        f"gs: {g('gs', 0):04x}   ss: {g('ss', 0):04x}   cs: {g('cs', 0):04x}"
    )


def show_guest_execution_state(machine, out: Out, vcpu, cpu: int) -> None:
    """show_execution_state() for an HVM vCPU current on `cpu` (no code or stack for HVM)."""
    out(xen_info_line(machine))
    out(f"CPU:    {cpu}")
    show_registers(out, vcpu.regs(), "hvm guest", vcpu.name)


def show_idle_execution_state(machine, out: Out, cpu: int) -> None:
    """A pCPU in the hypervisor (its idle loop): Xen would print show_execution_state() of
    its own registers, code and stack; here there are none, and one line says so."""
    out(NO_HOST_STATE.format(cpu=cpu))


def show_dom0_vcpu_state(out: Out, vcpu_id: int) -> None:
    """vcpu_show_execution_state() for a dom0 vCPU (x86/traps.c): one line instead."""
    out(NO_DOM0_STATE.format(vcpu=vcpu_id))


# ---- 64-bit PV vCPUs (emu/pv/) ----------------------------------------------------------

DEBUG_STACK_LINES = 20  # xen/arch/x86/traps.c:86 debug_stack_lines
STACK_WORDS_PER_LINE = 4  # traps.c:91
STACK_SIZE = 4096 << 3  # asm/config.h:41-42: PAGE_SIZE << STACK_ORDER
HYPERVISOR_VIRT_END = 0xFFFF880000000000  # asm/config.h:138
_P, _PSE = 0x1, 0x80
_ADDR = 0x000FFFFFFFFFF000


def pv_translate(machine, l4_mfn: int, va: int) -> int | None:
    """The machine address `va` maps to through a PV guest's own tables (direct paging:
    entries hold machine frames), read from RAM: no A/D bit is set. None: not mapped."""
    u64 = machine.ram.u64
    nr = machine.ram.nr_frames
    mfn = l4_mfn
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        if mfn >= nr:
            return None
        e = int(u64[(mfn << 9) + ((va >> shift) & 511)])
        if not e & _P:
            return None
        if level in (3, 2) and e & _PSE:
            ma = (e & _ADDR & ~((1 << shift) - 1)) + (va & ((1 << shift) - 1))
            return ma if ma >> 12 < nr else None
        mfn = (e & _ADDR) >> 12
    return (mfn << 12) + (va & 0xFFF) if mfn < nr else None


def pv_read_u64(machine, l4_mfn: int, va: int) -> int | None:
    """One little-endian word at `va` (it may straddle two pages); None on a fault."""
    first = pv_translate(machine, l4_mfn, va)
    if first is None:
        return None
    if (va & 0xFFF) <= 0xFF8:
        return int.from_bytes(machine.ram.read(first, 8), "little")
    end = (va | 0xFFF) + 1
    second = pv_translate(machine, l4_mfn, end & 0xFFFFFFFFFFFFFFFF)
    if second is None:
        return None
    n = end - va
    data = machine.ram.read(first, n) + machine.ram.read(second, 8 - n)
    return int.from_bytes(data, "little")


def show_pv_guest_stack(machine, out: Out, vcpu, rsp: int) -> None:
    """show_guest_stack() for a 64-bit PV vCPU current on its pCPU (traps.c:517-587):
    up to debug_stack_lines x 4 words from RSP, stopping at a STACK_SIZE boundary."""
    text = f"Guest stack trace from rsp={rsp:016x}:\n  "
    if not (rsp < 1 << 47 or rsp >= HYPERVISOR_VIRT_END):  # access_ok()
        text += "Guest-inaccessible memory.\n"
    else:
        l4 = vcpu.cr3_mfn()
        i, sp = 0, rsp
        while i < DEBUG_STACK_LINES * STACK_WORDS_PER_LINE:
            if ((sp - 1) ^ (sp + 8 - 1)) & STACK_SIZE:
                break
            word = pv_read_u64(machine, l4, sp)
            if word is None:
                if i != 0:
                    text += "\n    "
                text += "Fault while accessing guest memory."
                i = 1
                break
            if i != 0 and i % STACK_WORDS_PER_LINE == 0:
                text += "\n  "
            text += f" {word:016x}"
            sp = (sp + 8) & 0xFFFFFFFFFFFFFFFF
            i += 1
        if i == 0:
            text += "Stack empty."
        text += "\n"
    for line in text[:-1].split("\n"):
        out(line)


def pv_current_regs(vcpu) -> dict:
    """show_registers() of a PV vCPU current on a pCPU (traps.c:228-262): the guest's
    registers, and read_registers()'s view of the CPU itself -- CR0, CR3 and CR4 as the
    emulated CPU holds them, the FS/GS bases and the inactive GS base (swapgs'd by
    toggle_guest_mode) -- with CR2 from arch_get_cr2(v)."""
    from unicorn import x86_const as X

    r = vcpu.regs()
    uc = vcpu.uc
    r["cr0"] = uc.reg_read(X.UC_X86_REG_CR0)
    r["cr3"] = uc.reg_read(X.UC_X86_REG_CR3)
    r["cr4"] = uc.reg_read(X.UC_X86_REG_CR4)
    return r


def pv_event_mask(vcpu) -> int:
    """`EM: %d`: !!vcpu_info(v, evtchn_upcall_mask) (traps.c:202-203)."""
    return 1 if int(vcpu.upcall_mask) else 0


def show_pv_execution_state(machine, out: Out, vcpu, cpu: int) -> None:
    """show_execution_state(guest_cpu_user_regs()) for a 64-bit PV vCPU (traps.c:905-915):
    registers with `CONTEXT: pv guest (dNvM)`, no code bytes in guest mode (show_code()
    returns), then the guest's stack."""
    r = pv_current_regs(vcpu)
    out(xen_info_line(machine))
    out(f"CPU:    {cpu}")
    show_registers(out, r, "pv guest", vcpu.name, em=pv_event_mask(vcpu))
    show_pv_guest_stack(machine, out, vcpu, r["rsp"])
