"""`--log-events`: attach, detach and break events as marked lines in the `--log` file.

Without `--log-events` the log holds exactly the console's output bytes. With it, each event
is inserted between output chunks as

    \r\n[xenconsole 2026-11-26T06:00:00.123Z attach telnet:127.0.0.1:5555]\r\n

always with that framing: the leading `\r\n` puts the marker on a line of its own even when
the console was mid-line (at a prompt), and removing every match of `EVENT_RE` gives back the
output stream byte for byte. Events: `attach NAME`, `detach NAME`, `break NAME`, where NAME is
the client (`telnet:HOST:PORT`, `tcp:HOST:PORT`, `rfc2217:HOST:PORT`, `pty`).
"""

from __future__ import annotations

import re
import time

EVENT_RE = re.compile(
    rb"\r\n\[xenconsole (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"
    rb" (attach|detach|break) ([^\]\r\n]*)\]\r\n"
)


def timestamp(now: float | None = None) -> str:
    t = time.time() if now is None else now
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def event_line(kind: str, who: str, now: float | None = None) -> bytes:
    # A client name is ours, but keep the line one line whatever it holds.
    safe = re.sub(r"[\]\r\n]", "?", who)
    return f"\r\n[xenconsole {timestamp(now)} {kind} {safe}]\r\n".encode("utf-8", "replace")


def strip_events(log: bytes) -> bytes:
    """The output stream of a `--log-events` log: every event marker removed."""
    return EVENT_RE.sub(b"", log)


def install(hub) -> None:
    """Record the hub's attach/detach/break events in its log file.

    The hub's methods are wrapped rather than edited: the hub stays a plain fan-out, and
    event logging costs nothing unless asked for.
    """
    if hub.log is None:
        raise ValueError("--log-events needs --log FILE")

    def event(kind: str, who: str) -> None:
        # The hub gathers a reactor turn's output before fanning it out; hand that out
        # first, so the marker sits exactly where this client's stream starts or ends.
        flush = getattr(hub, "flush", None)
        if flush is not None:
            flush()
        if hub.log is not None:  # None once a write failed: logging stopped
            hub.log.write(event_line(kind, who))
            hub.log.flush()

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
