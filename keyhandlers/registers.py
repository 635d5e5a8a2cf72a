"""`d` (dump registers) and `0` (dump Dom0 registers): xen/common/keyhandler.c, x86 traps.c.

`d` prints, for every pCPU, the guest state of the vCPU on it (the vCPU running when the key
was pressed; every vCPU is held out of its Uc while the dump reads registers), or, for an
idle pCPU, the host state of Xen's idle loop. The format is xen/arch/x86/traps.c's: an HVM
vCPU shows `CONTEXT: hvm guest`; a 64-bit PV vCPU shows `EM:` and `CONTEXT: pv guest`, then
its guest stack (show_guest_stack()).

`0`: dom0 here is the console shell, not a guest running on Unicorn, so its vCPUs have no
emulated CPU state: after Xen's `*** Dumping Dom0 vcpu#N state: ***` one line says so. An
idle pCPU under `d` likewise gets one line: Xen is not x86 code here (docs/differences.md).
"""

from __future__ import annotations

from emu.cpu.regdump import (
    show_dom0_vcpu_state,
    show_guest_execution_state,
    show_idle_execution_state,
    show_pv_execution_state,
)
from keyhandlers import keyhandler


@keyhandler("d", "dump registers", diagnostic=True, irq=True)
def dump_registers(machine, out, args) -> None:
    out("'d' pressed -> dumping registers")
    out("")
    sched = machine.sched
    ncpu = machine.host.cpus
    if sched is not None:
        with sched.cond:
            on_cpu = [sched.current_on(c) for c in range(ncpu)]
    else:
        on_cpu = [None] * ncpu
    # The machine lock too: a vCPU that crashed after the snapshot is destroyed (and its Uc
    # released) on its pCPU's thread under that lock, outside emu_start.
    with machine.quiesce(None), machine.lock:
        for cpu in range(ncpu):  # CPU0 takes the serial interrupt: it dumps first
            v = on_cpu[cpu]
            if v is None or v.dead or getattr(v, "uc", True) is None:
                out(f"*** Dumping CPU{cpu} host state: ***")
                show_idle_execution_state(machine, out, cpu)
                out("")
                continue
            out(f"*** Dumping CPU{cpu} guest state ({v.name}): ***")  # keyhandler.c:154
            if getattr(v.domain, "pv", None) is not None:
                show_pv_execution_state(machine, out, v, cpu)  # x86/traps.c:905
            else:
                show_guest_execution_state(machine, out, v, cpu)
            out("")


@keyhandler("0", "dump Dom0 registers", diagnostic=True)
def dump_hwdom_registers(machine, out, args) -> None:
    dom0 = machine.domains.get(0)
    if dom0 is None:
        return
    out("'0' pressed -> dumping Dom0's registers")
    for v in dom0.vcpus:
        out(f"*** Dumping Dom0 vcpu#{v.vcpu_id} state: ***")  # x86/traps.c
        show_dom0_vcpu_state(out, v.vcpu_id)
