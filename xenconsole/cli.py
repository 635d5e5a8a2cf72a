"""The `xenconsole` command: `serve`, `keys`, `connect`, `xl`, `who`, `shim-dir`."""

from __future__ import annotations

import argparse
import sys

# Nothing heavy at import: `xenconsole xl` (and the `xl` shim) must start fast; the server's
# modules are imported by the subcommands that need them.


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one clear line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"xenconsole: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from xenconsole.transports import TRANSPORTS

    p = _Parser(prog="xenconsole", description="An emulated Xen host with a real serial console.")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    s = sub.add_parser("serve", help="boot the host and serve its console")
    for t in TRANSPORTS:
        if t.value_optional:
            s.add_argument(t.flag, dest=t.kind, nargs="?", const="", metavar=t.metavar)
        else:
            s.add_argument(t.flag, dest=t.kind, metavar=t.metavar)
        if t.default is not None:
            s.add_argument(f"--no-{t.kind}", dest=f"no_{t.kind}", action="store_true")
    s.add_argument("--config", metavar="FILE")
    s.add_argument("--memory", metavar="SIZE")
    s.add_argument("--cpus", metavar="N")
    s.add_argument("--dom0-mem", metavar="SIZE")
    s.add_argument("--log", metavar="FILE")
    s.add_argument("--log-events", action="store_true")
    s.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    s.add_argument("--no-wait", action="store_true")
    s.add_argument("--dom0-root", metavar="DIR")
    s.add_argument("--control", metavar="PATH")
    s.add_argument("--no-control", action="store_true")
    from xenconsole import labopts

    labopts.add_options(s)
    from xenconsole import access

    access.add_options(s)
    s.add_argument("--pidfile", metavar="FILE")
    lg = sub.add_parser("labgrid-exporter-config", help="labgrid exporter YAML for a lab file")
    lg.add_argument("lab", metavar="LAB.toml")
    lg.add_argument("-o", "--output", metavar="FILE")
    pw = sub.add_parser("passwd", help="print a password file line for NAME")
    pw.add_argument("name")
    k = sub.add_parser("keys", help="list every debug key, as 'h' would")
    k.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    c = sub.add_parser("connect", help="interactive client")
    c.add_argument("url")
    x = sub.add_parser("xl", help="run xl in the emulated dom0", add_help=False)
    x.add_argument("--control", metavar="PATH")
    x.add_argument("xl_args", nargs=argparse.REMAINDER, metavar="ARGS")
    sub.add_parser("shim-dir", help="print the directory holding the `xl` shim")
    r = sub.add_parser("record", help="record every guest's accessed pages over time (.npz)")
    r.add_argument("--control", metavar="PATH")
    r.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    r.add_argument("--duration", type=float, default=None, metavar="SECONDS")
    r.add_argument("--buckets", type=int, default=256, metavar="B")
    r.add_argument("--checkpoint", type=float, default=300.0, metavar="SECONDS")
    r.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    pl = sub.add_parser("plot", help="draw a recorded series (heat maps, working set, idle ages)")
    pl.add_argument("input", metavar="IN.npz")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.png|FILE.svg")
    w = sub.add_parser("who", help="list who is attached to a server's serial line")
    w.add_argument("--control", metavar="PATH")
    return p


def cmd_keys(args) -> int:
    from xenconsole.options import UsageError, load_keys

    try:
        load_keys(args.plugin)
    except UsageError as e:
        sys.stderr.write(f"xenconsole: error: {e}\n")
        return 2
    import keyhandlers

    print("'h' pressed -> showing installed handlers")
    for kh in keyhandlers.installed():
        print(keyhandlers.handler_line(kh))
    return 0


def xl_command(argv: list[str]) -> int:
    """`xenconsole xl [--control PATH] ARGS...`: everything after is xl's, untouched."""
    from xenconsole.xlclient import main as xl_main

    control = None
    if argv and argv[0].startswith("--control="):
        control, argv = argv[0].split("=", 1)[1], argv[1:]
    elif argv and argv[0] == "--control":
        if len(argv) < 2:
            sys.stderr.write("xenconsole: error: --control needs a PATH\n")
            return 2
        control, argv = argv[1], argv[2:]
    return xl_main(argv, control)


def cmd_passwd(args) -> int:
    """`xenconsole passwd NAME`: read a password (twice on a terminal), print the line."""
    import getpass

    from xenconsole.access import hash_password

    if ":" in args.name or not args.name.strip():
        sys.stderr.write("xenconsole: error: NAME must be non-empty and have no ':'\n")
        return 2
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            sys.stderr.write("xenconsole: error: the passwords differ\n")
            return 2
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    print(f"{args.name}:{hash_password(pw)}")
    return 0


def cmd_record_plot(args) -> int:
    """`record` and `plot` (xenconsole/record.py, xenconsole/plot.py): one error line."""
    from xenconsole.xlclient import ClientError

    try:
        if args.cmd == "record":
            from xenconsole.record import main as record_main

            return record_main(args)
        from xenconsole.plot import PlotError
        from xenconsole.plot import main as plot_main

        try:
            return plot_main(args)
        except PlotError as e:
            raise ClientError(str(e)) from None
    except ClientError as e:
        sys.stderr.write(f"xenconsole: error: {e}\n")
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "xl":
        return xl_command(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        from xenconsole.labserve import is_lab_file, serve_lab

        if args.config and is_lab_file(args.config):  # several hosts: docs/contract.md §10
            return serve_lab(args, build_parser)
        from xenconsole.serve import serve

        return serve(args)
    if args.cmd == "keys":
        return cmd_keys(args)
    if args.cmd == "passwd":
        return cmd_passwd(args)
    if args.cmd == "who":
        from xenconsole.xlclient import who_main

        return who_main(args.control)
    if args.cmd == "labgrid-exporter-config":
        from xenconsole.labgrid_export import main as export_main

        return export_main(args, build_parser)
    if args.cmd == "connect":
        try:
            from xenconsole.connect import main as connect_main
        except ImportError:
            sys.stderr.write("xenconsole: error: connect is not available in this build\n")
            return 2
        return connect_main(args.url)
    if args.cmd in ("record", "plot"):
        return cmd_record_plot(args)
    if args.cmd == "shim-dir":
        from xenconsole.xlclient import shim_dir

        print(shim_dir())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
