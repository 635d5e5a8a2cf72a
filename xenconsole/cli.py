"""The `xenconsole` command: `serve`, `keys`, `connect`."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from emu.host import ConfigError, load_config, parse_size

DEFAULT_TELNET = "127.0.0.1:4555"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one clear line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"xenconsole: error: {message}\n")
        sys.exit(2)


def parse_listen(text: str, what: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--{what}: invalid port in {text!r} (expected [HOST:]PORT)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xenconsole", description="An emulated Xen host with a real serial console.")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    s = sub.add_parser("serve", help="boot the host and serve its console")
    s.add_argument("--telnet", metavar="[HOST:]PORT", default=None)
    s.add_argument("--no-telnet", action="store_true")
    s.add_argument("--tcp", metavar="[HOST:]PORT")
    s.add_argument("--rfc2217", metavar="[HOST:]PORT")
    s.add_argument("--pty", nargs="?", const="", metavar="LINK")
    s.add_argument("--config", metavar="FILE")
    s.add_argument("--memory", metavar="SIZE")
    s.add_argument("--cpus", metavar="N")
    s.add_argument("--dom0-mem", metavar="SIZE")
    s.add_argument("--log", metavar="FILE")
    s.add_argument("--log-events", action="store_true")
    s.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    s.add_argument("--no-wait", action="store_true")
    k = sub.add_parser("keys", help="list every debug key, as 'h' would")
    k.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    c = sub.add_parser("connect", help="interactive client")
    c.add_argument("url")
    return p


def host_from_args(args) -> object:
    host = load_config(args.config)
    if args.memory is not None:
        host.memory = parse_size(args.memory)
    if args.cpus is not None:
        if not str(args.cpus).isdigit():
            raise ConfigError(f"--cpus: invalid number {args.cpus!r}")
        host.cpus = int(args.cpus)
    if args.dom0_mem is not None:
        host.dom0_mem = parse_size(args.dom0_mem)
    host.validate()
    return host


def cmd_keys(args) -> int:
    import keyhandlers

    try:
        keyhandlers.load_builtin()
        keyhandlers.load_entry_points()
        keyhandlers.load_modules(args.plugin)
    except Exception as e:
        sys.stderr.write(f"xenconsole: error: plugin: {e}\n")
        return 2
    print("'h' pressed -> showing installed handlers")
    for kh in keyhandlers.installed():
        print(keyhandlers.handler_line(kh))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        from xenconsole.serve import serve

        return serve(args)
    if args.cmd == "keys":
        return cmd_keys(args)
    if args.cmd == "connect":
        try:
            from xenconsole.connect import main as connect_main
        except ImportError:
            sys.stderr.write("xenconsole: error: connect is not available in this build\n")
            return 2
        return connect_main(args.url)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
