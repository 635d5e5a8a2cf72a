"""`--log-events`: attach, detach and break events in a file of their own, `FILE.events`;
with `--log-input`, what clients typed too (`input` events).

The `--log FILE` itself always holds exactly the console's output bytes. Events go to
`FILE.events` beside it, one line each:

    2026-11-26T06:00:00.123Z 48213 attach telnet:127.0.0.1:5555

time (UTC, milliseconds), the byte offset in FILE where the event happened (the log's
length at that moment: output before it was sent before the event), the event (`attach`,
`detach`, `break`) and the client (`telnet:HOST:PORT`, `tcp:HOST:PORT`,
`rfc2217:HOST:PORT`, `pty`). An `input` event (`--log-input`) adds the bytes that reached
the line as one printable word, every byte outside `!`..`~` and the backslash as `\\xHH`
(nothing typed can act on a reader's terminal or forge a line):

    2026-11-26T06:00:01.456Z 48213 input telnet:127.0.0.1:5555 xl\\x20list\\x0d

Nothing a guest or dom0 prints reaches the events file, so no
console byte sequence can forge an event or be mistaken for one (issue 15 finding 8: an
in-band marker line could be echoed by anyone at the dom0 prompt).
"""

from __future__ import annotations

import re
import sys
import time
from typing import NamedTuple

from xenconsole.logfiles import SideFile

EVENT_KINDS = ("attach", "detach", "break", "input")
EVENT_RE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\d+) "
    r"(?:(attach|detach|break) ([!-~]+)|input ([!-~]+) ([!-~]*))$"
)


class Event(NamedTuple):
    time: str
    offset: int  # byte offset in the log file
    kind: str
    who: str
    data: bytes = b""  # an `input` event's bytes


def events_path(log_path: str) -> str:
    return log_path + ".events"


def timestamp(now: float | None = None) -> str:
    t = time.time() if now is None else now
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def event_line(
    kind: str, who: str, offset: int, now: float | None = None, data: bytes = b""
) -> bytes:
    """One line of the events file. A client name is ours; keep it one printable word."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event {kind!r}")
    safe = re.sub(r"[^!-~]", "?", who) or "?"
    tail = f" {escape(data)}" if kind == "input" else ""
    return f"{timestamp(now)} {offset} {kind} {safe}{tail}\n".encode("ascii")


def escape(data: bytes) -> str:
    """Bytes as one printable word: `!`..`~` as themselves, every other byte and the
    backslash as `\\xHH`."""
    return "".join(chr(c) if 0x21 <= c <= 0x7E and c != 0x5C else f"\\x{c:02x}" for c in data)


def unescape(word: str) -> bytes:
    return re.sub(
        rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), word.encode("ascii")
    )


def parse_events(data: bytes) -> list[Event]:
    """The events of an events file; ValueError names a line that is not one."""
    out = []
    for n, raw in enumerate(data.decode("ascii", "replace").splitlines(), 1):
        m = EVENT_RE.match(raw)
        if m is None:
            raise ValueError(f"line {n}: not an event: {raw!r}")
        t, offset = m.group(1), int(m.group(2))
        if m.group(3) is not None:
            out.append(Event(t, offset, m.group(3), m.group(4)))
        else:
            out.append(Event(t, offset, "input", m.group(5), unescape(m.group(6))))
    return out


def read_events(log_path: str) -> list[Event]:
    with open(events_path(log_path), "rb") as f:
        return parse_events(f.read())


def install(hub, log_path: str) -> SideFile:
    """Record the hub's attach/detach/break events in `FILE.events`; returns that file
    (the caller closes it; SIGHUP reopens it, xenconsole/logfiles.py). OSError if it cannot
    be opened.

    The hub's methods are wrapped rather than edited: the hub stays a plain fan-out, and
    event logging costs nothing unless asked for.
    """
    if hub.log is None:
        raise ValueError("--log-events needs --log FILE")
    out = SideFile(events_path(log_path))

    def event(kind: str, who: str) -> None:
        # The hub gathers a reactor turn's output before fanning it out; hand that out
        # first, so the offset is exactly where this client's stream starts or ends.
        flush = getattr(hub, "flush", None)
        if flush is not None:
            flush()
        if out.stopped or hub.log is None:  # a write failed: logging stopped
            return
        try:
            out.write(event_line(kind, who, hub.log.tell()))
        except (OSError, ValueError) as e:
            sys.stderr.write(f"xenconsole: event log write failed ({e}); event logging stopped\n")

    attach, detach, on_break = hub.attach, hub.detach, hub.on_break

    def logged_attach(client) -> None:
        # Before the attach: the first attach powers the host on, and its output follows.
        event("attach", client.name)
        attach(client)

    def logged_detach(client) -> None:
        known = client in hub.clients
        detach(client)
        if known:
            event("detach", client.name)

    def logged_break(client) -> None:
        event("break", getattr(client, "name", "?"))
        on_break(client)

    hub.attach, hub.detach, hub.on_break = logged_attach, logged_detach, logged_break
    return out


def install_input(hub, out: SideFile) -> None:
    """`--log-input`: every client's input that reached the line (not a spectator's or a
    refused writer's) becomes an `input` event in the events file `out`, out of band: the
    console log stays exactly the output."""

    def tap(data: bytes, client) -> None:
        if out.stopped or hub.log is None:
            return
        try:
            out.write(event_line("input", getattr(client, "name", "-"), hub.log.tell(), data=data))
        except (OSError, ValueError) as e:
            sys.stderr.write(f"xenconsole: event log write failed ({e}); event logging stopped\n")

    hub.input_taps.append(tap)
