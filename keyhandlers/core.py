"""Core keys from xen/common/keyhandler.c and console.c: `h`, `*`, `+`, `-`, `A`, `G`, `R`."""

from __future__ import annotations

from keyhandlers import handler_line, installed, keyhandler


@keyhandler("h", "show this message")
def show_handlers(machine, out, args) -> None:
    from emu.boot import version_lines

    out("'h' pressed -> showing installed handlers")
    for line in version_lines(machine):  # show_handlers() calls print_version()
        out(line)
    for kh in installed():
        out(handler_line(kh))


@keyhandler("*", "print all diagnostics", irq=True)
def run_all_keyhandlers(machine, out, args) -> None:
    from keyhandlers.dispatch import run_handler

    out("'*' pressed -> firing all diagnostic keyhandlers")
    diag = [kh for kh in installed() if kh.diagnostic]
    # IRQ-safe diagnostic handlers run first, then the rest from the tasklet, in key order.
    for kh in [k for k in diag if k.irq] + [k for k in diag if not k.irq]:
        out(f"[{kh.key}: {kh.desc}]")
        run_handler(machine, kh)


@keyhandler("+", "increase log level threshold", irq=True)
def do_inc_thresh(machine, out, args) -> None:
    machine.console.adjust_thresh("+", +1)


@keyhandler("-", "decrease log level threshold", irq=True)
def do_dec_thresh(machine, out, args) -> None:
    machine.console.adjust_thresh("-", -1)


@keyhandler("G", "toggle host/guest log level adjustment", irq=True)
def do_toggle_guest(machine, out, args) -> None:
    console = machine.console
    console.thresh_adj = "guest" if console.thresh_adj == "standard" else "standard"
    out(f"'G' pressed -> {console.thresh_adj} log level adjustments enabled")


@keyhandler("A", "toggle alternative key handling", irq=True)
def do_toggle_alt_key(machine, out, args) -> None:
    """keyhandler.c:508-513. Alternative handling runs diagnostic keys from the interrupt
    rather than a tasklet; here every key runs on the console's thread either way, so the
    flag changes nothing else (docs/differences.md)."""
    from keyhandlers._state import key_state

    st = key_state(machine, "A", alt_key_handling=False)
    st["alt_key_handling"] = not st["alt_key_handling"]
    mode = "alternative" if st["alt_key_handling"] else "normal"
    out(f"'A' pressed -> using {mode} key handling")


@keyhandler("R", "reboot machine", irq=True)
def reboot_machine(machine, out, args) -> None:
    out("'R' pressed -> rebooting machine")
    machine.request_reboot()
