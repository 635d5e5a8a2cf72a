"""Key `w`: replay the console ring to the serial line (not back into the ring)."""

from __future__ import annotations

from keyhandlers import keyhandler


@keyhandler("w", "synchronously dump console ring buffer (dmesg)")
def conring_dump_keyhandler(machine, out, args) -> None:
    out("'w' pressed -> dumping console ring buffer (dmesg)")
    out.raw(machine.console.ring.read().replace(b"\n", b"\r\n"))
