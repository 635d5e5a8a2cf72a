"""`n`: NMI statistics (xen/arch/x86/nmi.c:571-593 do_nmi_stats(), registered at :604).

No NMI is ever delivered on this machine (no watchdog, no IPI NMIs), so every count is 0;
dom0's vCPU0 has none pending or masked.
"""

from __future__ import annotations

from keyhandlers import keyhandler


@keyhandler("n", "NMI statistics", diagnostic=True)
def do_nmi_stats(machine, out, args) -> None:
    out("CPU\tNMI")
    for cpu in range(machine.host.cpus):
        out(f"{cpu:3d}\t{0:3d}")
    if 0 in machine.domains and machine.domains[0].vcpus:
        out("d0v0: NMI neither pending nor masked")
