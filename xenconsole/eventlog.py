"""`--log-events`: attach, detach and break events as marked lines in the `--log` file.

Without `--log-events` the log holds exactly the console's output bytes. With it, each event
is one line of its own:

    [xenconsole 2026-11-26T06:00:00.123Z attach telnet:127.0.0.1:5555]\\r\\n

starting on a fresh line (a `\\r\\n` is written first if the console was mid-line), so
`grep '^\\[xenconsole '` finds every event and removing those lines (and the `\\r\\n` added
before a mid-line event) gives back the output stream. Events: `attach NAME`, `detach NAME`,
`break NAME`; NAME is `telnet:HOST:PORT`, `tcp:HOST:PORT`, `rfc2217:HOST:PORT` or `pty`.
"""

from __future__ import annotations

import re
import time
from typing import BinaryIO

EVENT_RE = re.compile(
    rb"\[xenconsole (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (attach|detach|break) ([^\]\r\n]*)\]\r\n"
)


def timestamp(now: float | None = None) -> str:
    t = time.time() if now is None else now
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def event_line(kind: str, who: str, now: float | None = None) -> bytes:
    # A client name is ours, but keep the line one line whatever it holds.
    safe = re.sub(r"[\]\r\n]", "?", who)
    return f"[xenconsole {timestamp(now)} {kind} {safe}]\r\n".encode("utf-8", "replace")


class TrackingLog:
    """The log file, remembering whether the last output byte ended a line."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.at_line_start = True

    def write(self, data: bytes) -> int:
        if data:
            self.at_line_start = data.endswith(b"\n")
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def event(self, kind: str, who: str) -> None:
        line = event_line(kind, who)
        if not self.at_line_start:
            line = b"\r\n" + line
        self.f.write(line)
        self.f.flush()
        self.at_line_start = True


def install(hub) -> TrackingLog:
    """Record the hub's attach/detach/break events in its log file.

    The hub's methods are wrapped rather than edited: the hub stays a plain fan-out, and
    event logging costs nothing unless asked for.
    """
    if hub.log is None:
        raise ValueError("--log-events needs --log FILE")
    log = hub.log if isinstance(hub.log, TrackingLog) else TrackingLog(hub.log)
    hub.log = log
    attach, detach, on_break = hub.attach, hub.detach, hub.on_break

    def logged_attach(client) -> None:
        # Before the attach: the first attach powers the host on, and its output follows.
        log.event("attach", client.name)
        attach(client)

    def logged_detach(client) -> None:
        known = client in hub.clients
        detach(client)
        if known:
            log.event("detach", client.name)

    def logged_break(client) -> None:
        log.event("break", getattr(client, "name", "?"))
        on_break(client)

    hub.attach, hub.detach, hub.on_break = logged_attach, logged_detach, logged_break
    return log
