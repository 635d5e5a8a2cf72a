"""Register dumps in Xen's format (xen/arch/x86/traps.c: _show_registers(), print_xen_info()).

Used by keys `d` and `0` and by the crash path (`Domain N (vcpu#M) crashed on cpu#K:`).
"""

from __future__ import annotations

from collections.abc import Callable

from emu.version import XEN_VERSION

Out = Callable[[str], None]

# The idle vCPU's context as the `d` key shows a pCPU with no guest on it: Xen is in
# idle_loop() with its own page tables. Our hypervisor is Python, so these are the values
# of the emulated Xen (its idle loop address in the Xen image, the idle page table at the
# Xen image's first frame), not of the host process.
IDLE_RIP = 0xFFFF82D040325A40
IDLE_SYMBOL = "idle_loop+0x90/0xd0"
IDLE_CR0, IDLE_CR4 = 0x8005003B, 0x3526E0
XEN_CS, XEN_SS = 0xE008, 0xE010


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
    """A pCPU running its idle vCPU, interrupted in the hypervisor."""
    out(xen_info_line(machine))
    out(f"CPU:    {cpu}")
    xen_mfn = machine.idle_pt_maddr
    stack = 0xFFFF830000000000 + ((cpu + 1) << 15) - 0x58  # per-CPU stack, below cpu_info
    r = {
        "cs": XEN_CS,
        "ss": XEN_SS,
        "rip": IDLE_RIP,
        "rflags": 0x246,
        "rsp": stack,
        "rbp": stack + 0x50,
        "rbx": cpu,
        "cr0": IDLE_CR0,
        "cr4": IDLE_CR4,
        "cr3": xen_mfn,
    }
    show_registers(out, r, "hypervisor", None, IDLE_SYMBOL)
