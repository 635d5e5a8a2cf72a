"""The console's transports, one row each in `TRANSPORTS`.

A transport is a module here holding both of its sides: the server's (`listen`: start taking
clients onto the hub) and the client's (a `xenconsole.clientlink.Link` for its URL scheme).
Its row is all the rest of xenconsole reads: `xenconsole serve` takes its option and prints
its ready line `xenconsole: KIND WHERE`, `xenconsole.testing.serve` takes its keyword, and
`xenconsole connect` / `xenconsole.expect.Console.open` open its URLs. Adding a transport is
one module and one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xenconsole.clientlink import Link, LinkUsageError
from xenconsole.hub import Hub, Listener
from xenconsole.options import parse_address
from xenconsole.transports import pty, rfc2217, tcp, telnet


@dataclass(frozen=True)
class Transport:
    kind: str  # its word in the ready line, `ServedHost.urls` and `testing.serve(KIND=True)`
    flag: str  # the `xenconsole serve` option
    metavar: str
    parse: Callable[[str, str], Any]  # (option value, kind) -> what `listen` takes; UsageError
    listen: Callable[[Any, Hub, Any], Listener]  # (reactor, hub, parsed value): the server side
    scheme: str  # clients' URL scheme, "" for a device path
    link: Callable[[str], Link]  # URL -> the client side
    default: str | None = None  # listens unless `--no-KIND` is given
    value_optional: bool = False  # the option may stand alone (`--pty`)
    any_free: str | None = None  # the option value for any free port (tests); None: no value

    def url(self, where: str) -> str:
        """A client's URL for what the ready line shows."""
        return f"{self.scheme}://{where}" if self.scheme else where


ADDRESS = "[HOST:]PORT"
ANY_PORT = "127.0.0.1:0"

# In the order of the ready lines.
TRANSPORTS: tuple[Transport, ...] = (
    Transport(
        "telnet", "--telnet", ADDRESS, parse_address, telnet.listen, "telnet", telnet.TelnetLink,
        default=telnet.DEFAULT_ADDRESS, any_free=ANY_PORT,
    ),
    Transport(
        "tcp", "--tcp", ADDRESS, parse_address, tcp.listen, "socket", tcp.SocketLink,
        any_free=ANY_PORT,
    ),
    Transport(
        "rfc2217", "--rfc2217", ADDRESS, parse_address, rfc2217.listen, "rfc2217",
        rfc2217.RFC2217Link, any_free=ANY_PORT,
    ),
    Transport(
        "pty", "--pty", "LINK", pty.parse_link, pty.listen, "", pty.DeviceLink,
        value_optional=True,
    ),
)  # fmt: skip


def by_kind(kind: str) -> Transport:
    for t in TRANSPORTS:
        if t.kind == kind:
            return t
    raise KeyError(f"no transport {kind!r}")


def open_link(url: str) -> Link:
    """The client link for `url`: `SCHEME://...` of a transport, or a device path."""
    scheme, sep, _ = url.partition("://")
    for t in TRANSPORTS:
        if t.scheme == (scheme if sep else ""):
            return t.link(url)
    schemes = ", ".join(f"{t.scheme}://" for t in TRANSPORTS if t.scheme)
    raise LinkUsageError(f"{url}: unknown scheme (use {schemes} or a path)")
