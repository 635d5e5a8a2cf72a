"""What `xenconsole serve` options mean, shared by the CLI, `serve` and the transports:
listen addresses, the host's size, and the one-line usage error."""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

from emu.host import ConfigError, HostConfig, load_config, parse_size


class UsageError(Exception):
    """A bad option; the message is the one line printed after `xenconsole: error: `."""


class Address(NamedTuple):
    host: str
    port: int


def parse_address(text: str, kind: str) -> Address:
    """`[HOST:]PORT` of option `--KIND` -> Address; the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--{kind}: invalid port in {text!r} (expected [HOST:]PORT)")
    return Address(host, int(port))


def is_loopback(host: str) -> bool:
    """Whether a listen address is on the loopback interface: `localhost` in any case,
    127.0.0.0/8 in any form inet_aton accepts (`127.1`), ::1, ::ffff:127.x.y.z."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        try:  # the shorthand forms the resolver takes: 127.1, 0x7f.1, 2130706433
            return socket.inet_aton(host)[0] == 127
        except OSError:
            return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def host_from_args(args) -> HostConfig:
    """The host described by `--config`, `--memory`, `--cpus`, `--dom0-mem`; ConfigError."""
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


def load_keys(plugins: list[str]) -> None:
    """The built-in debug keys, then installed plugins, then `--plugin` modules, in that order
    (a plugin that takes a built-in key is refused by name)."""
    import keyhandlers

    try:
        keyhandlers.load_builtin()
        keyhandlers.load_entry_points()
        keyhandlers.load_modules(plugins)
    except Exception as e:
        raise UsageError(f"plugin: {e}") from None
