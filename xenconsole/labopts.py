"""`xenconsole serve` options for running a console server in a lab (issue 13): replay on
attach, per-line log timestamps, typed input in the event log, read-only (spectator)
listeners and the exclusive-writer mode.

Kept apart from serve.py so the serve command's parse/listen/run stay small: `add_options`
adds the options, `parse` checks them into `LabOptions`, `apply` sets up the hub, and
`spectator_listeners` opens the read-only listeners (`--KIND-ro ADDR`, one per address
transport of the table in xenconsole/transports/__init__.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from xenconsole.hub import DEFAULT_REPLAY_BYTES, Hub, Listener
from xenconsole.options import UsageError
from xenconsole.transports import TRANSPORTS, Transport


def ro_transports() -> list[Transport]:
    """Transports that can have a read-only listener: those listening on an address."""
    return [t for t in TRANSPORTS if t.any_free is not None]


def add_options(s) -> None:
    """The lab options of `xenconsole serve` (argparse sub-parser `s`)."""
    s.add_argument("--replay-bytes", metavar="N", default=str(DEFAULT_REPLAY_BYTES))
    s.add_argument("--log-timestamps", action="store_true")
    s.add_argument("--log-input", action="store_true")
    s.add_argument("--exclusive", action="store_true")
    for t in ro_transports():
        s.add_argument(f"{t.flag}-ro", dest=f"{t.kind}_ro", action="append", default=[],
                       metavar=t.metavar)  # fmt: skip


@dataclass
class LabOptions:
    replay_bytes: int = DEFAULT_REPLAY_BYTES
    log_timestamps: bool = False
    log_input: bool = False
    exclusive: bool = False
    ro: list[tuple[Transport, Any]] = field(default_factory=list)  # spectator listeners


def parse(args, log: str | None) -> LabOptions:
    """The lab options, checked; UsageError in one line."""
    text = str(getattr(args, "replay_bytes", DEFAULT_REPLAY_BYTES))
    if not text.isdigit():
        raise UsageError(f"--replay-bytes: expected a number of bytes, got {text!r}")
    opts = LabOptions(int(text))
    opts.log_timestamps = bool(getattr(args, "log_timestamps", False))
    opts.log_input = bool(getattr(args, "log_input", False))
    opts.exclusive = bool(getattr(args, "exclusive", False))
    if opts.log_timestamps and not log:
        raise UsageError("--log-timestamps needs --log FILE")
    if opts.log_input and not log:
        raise UsageError("--log-input needs --log FILE")
    for t in ro_transports():
        for value in getattr(args, f"{t.kind}_ro", None) or []:
            opts.ro.append((t, t.parse(value, f"{t.kind}-ro")))
    return opts


class SpectatorHub:
    """The hub as a read-only listener's clients see it: they attach as spectators
    (`read_only`), and their input and BREAKs go nowhere."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def attach(self, client) -> None:
        client.read_only = True
        client.name = f"{client.name}(ro)" if not client.name.endswith("(ro)") else client.name
        self._hub.attach(client)

    def detach(self, client) -> None:
        self._hub.detach(client)

    def receive(self, data: bytes, client=None) -> None:
        pass

    def on_break(self, client) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hub, name)


def spectator_listeners(
    reactor_for, hub: Hub, opts: LabOptions
) -> list[tuple[Transport, Listener]]:
    """Open every `--KIND-ro` listener, each through `reactor_for(value)` (the reactor, or
    one that authenticates); the caller closes them (CannotListenError)."""
    out: list[tuple[Transport, Listener]] = []
    spectators = SpectatorHub(hub)
    try:
        for t, value in opts.ro:
            out.append((t, t.listen(reactor_for(value), spectators, value)))
    except BaseException:
        for _t, listener in out:
            listener.close()
        raise
    return out


class TimestampedLog:
    """A log file that starts every line with conserver's `[date] ` stamp (the time the
    line's first byte was written, local time, as conserver's `[Thu Dec  3 09:30:09 2026]`).
    Only the file changes: clients get the output as it was."""

    def __init__(self, f: BinaryIO, clock=time.time) -> None:
        self.f = f
        self.clock = clock
        self.at_line_start = True

    def _stamp(self) -> bytes:
        return time.strftime("[%a %b %e %H:%M:%S %Y] ", time.localtime(self.clock())).encode()

    def write(self, data: bytes) -> int:
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if self.at_line_start:
                out += self._stamp()
            out += line
            self.at_line_start = line.endswith(b"\n")
        self.f.write(bytes(out))
        return len(data)

    def flush(self) -> None:
        self.f.flush()

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


def apply(hub: Hub, opts: LabOptions) -> None:
    """Replay, exclusive mode and the log's timestamps on the hub (after the log is open).
    `--log-input` is the event log's business (xenconsole/eventlog.py install_input)."""
    hub.replay_bytes = opts.replay_bytes
    hub.exclusive = opts.exclusive
    if opts.log_timestamps and hub.log is not None:
        hub.log = TimestampedLog(hub.log)
