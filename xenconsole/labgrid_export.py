"""`xenconsole labgrid-exporter-config LAB.toml`: labgrid exporter YAML for a lab file.

Each `[[console]]` with an `rfc2217` (or else a `tcp`) listener becomes one exporter group
named after the console, holding a `NetworkSerialPort` (labgrid/resource/serialport.py):
`protocol: rfc2217` or `raw`. Run `labgrid-exporter` with it on the machine that runs the
lab server; labgrid clients elsewhere reach the loopback listeners through the exporter's
host (labgrid's SSH proxying), so the consoles stay on loopback.

The YAML is written by hand (a handful of scalar keys): no YAML library is needed.
"""

from __future__ import annotations

from xenconsole.options import Address, UsageError


def exporter_config(lab_path: str, build_parser) -> str:
    """The exporter YAML for every console of the lab file; UsageError in one line."""
    from xenconsole.labserve import load_lab

    lab = load_lab(lab_path, build_parser)
    # labgrid reads the file as a Jinja2 template with `#` line statements: `##` comments.
    out = [f"## labgrid exporter config for {lab_path} (xenconsole labgrid-exporter-config)"]
    for c in lab.consoles:
        by_kind = {t.kind: v for t, v in c.config.transports}
        kind = "rfc2217" if "rfc2217" in by_kind else "tcp" if "tcp" in by_kind else None
        if kind is None:
            raise UsageError(f"console {c.name}: labgrid needs an rfc2217 or tcp listener")
        addr = by_kind[kind]
        assert isinstance(addr, Address)
        if addr.port == 0:
            raise UsageError(f"console {c.name}: {kind} port 0 is chosen at start; labgrid "
                             "needs a fixed port")  # fmt: skip
        out += [
            f"{c.name}:",
            "  NetworkSerialPort:",
            f"    host: '{addr.host}'",
            f"    port: {addr.port}",
            "    speed: 115200",
            f"    protocol: {'rfc2217' if kind == 'rfc2217' else 'raw'}",
        ]
    return "\n".join(out) + "\n"


def main(args, build_parser) -> int:
    import sys

    from emu.host import ConfigError

    try:
        text = exporter_config(args.lab, build_parser)
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"xenconsole: error: {e}\n")
        return 2
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as e:
            sys.stderr.write(f"xenconsole: error: cannot write {args.output}: {e.strerror}\n")
            return 2
    else:
        sys.stdout.write(text)
    return 0
