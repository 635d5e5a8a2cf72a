"""`p` / `P`: performance counters (xen/common/perfc.c: perfc_printall, perfc_reset)."""

from __future__ import annotations

from keyhandlers import keyhandler


@keyhandler("p", "print performance counters", diagnostic=True)
def perfc_printall(machine, out, args) -> None:
    out(f"Xen performance counters SHOW  (now = {machine.now()})")
    machine.perfc.printall(out)


@keyhandler("P", "reset performance counters")
def perfc_reset(machine, out, args) -> None:
    out(f"Xen performance counters RESET (now = {machine.now()})")
    machine.perfc.reset()
