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
