"""An example xenconsole plugin: key 'y' prints each domain's memory and vCPUs.

Install it (`pip install examples/xenconsole_example_plugin`) and `xenconsole serve` picks it
up through the `xenconsole.keyhandlers` entry point; or, without installing, put this
directory on PYTHONPATH and pass `--plugin xenconsole_example_plugin`.

A handler gets the live machine, `out` (each call prints one `(XEN) ` line) and a tuple of
argument strings; raising `KeyhandlerError` prints its message as one `(XEN)` error line.
"""

from __future__ import annotations

from keyhandlers import KeyhandlerError, keyhandler


@keyhandler(
    "y",
    "dump domain memory summary (example plugin)",
    diagnostic=True,
    args="[dN]",
    pressed="dumping domain memory summary",
)
def dump_domain_memory(machine, out, args: tuple[str, ...]) -> None:
    domains = machine.domains
    if args:
        text = args[0]
        if not (text.startswith("d") and text[1:].isdigit()):
            raise KeyhandlerError(f"bad domain {text!r} (expected dN)")
        if int(text[1:]) not in domains:
            raise KeyhandlerError(f"no domain {text}")
        domains = {int(text[1:]): domains[int(text[1:])]}
    for domid in sorted(domains):
        d = domains[domid]
        mib = d.tot_pages * 4096 // (1024 * 1024)
        out(f"d{domid} {d.name}: {d.tot_pages} pages ({mib} MiB), {len(d.vcpus)} vCPUs")
    out(f"{len(domains)} domain(s), host uptime {machine.now() // 1_000_000_000} s")
