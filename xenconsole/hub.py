"""The console hub: one serial line shared by every attached client.

Every client's input enters the machine through `Console.serial_rx`; every output byte the
machine sends to the serial line is fanned out here to every client (and the log file).
Transports (xenconsole/transports/) are backends that only call `attach`, `detach` and
`receive`, and implement `deliver(bytes)`.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import BinaryIO, NamedTuple, Protocol

# The serial driver's asynchronous transmit buffer: CONFIG_SERIAL_TX_BUFSIZE's default
# (xen/drivers/char/Kconfig). Output printed on a vCPU thread waits here for the reactor.
SERIAL_TX_BUFSIZE = 32768


class Client(Protocol):
    name: str

    def deliver(self, data: bytes) -> None: ...


class Attached(NamedTuple):
    """One attached client as `who` shows it."""

    name: str  # KIND:HOST:PORT, or pty
    mode: str  # "rw", or "ro" for a spectator
    since: float  # time.time() of its attach
    writer: bool  # holds the line (exclusive-writer mode)


# A new client first gets the line's last output (conserver's `^Ecr`), `--replay-bytes`.
DEFAULT_REPLAY_BYTES = 64 * 1024


class Listener(NamedTuple):
    """A transport waiting for clients: where (its ready line's text) and how to stop it."""

    where: str
    close: Callable[[], object]


class Hub:
    def __init__(self, reactor, log: BinaryIO | None = None) -> None:
        self.reactor = reactor
        self.clients: list[Client] = []
        self.log = log
        self._reactor_thread = threading.get_ident()
        self.on_first_attach: Callable[[], None] | None = None
        self.on_input: Callable[[bytes], None] = lambda data: None
        self.on_break: Callable[[Client], None] = lambda client: None
        self.bytes_out = 0
        self._pending = bytearray()
        self._tx = bytearray()  # printed on other threads, not yet on the reactor
        self._tx_lock = threading.Lock()
        self._tx_quench = False
        self.tx_dropped = 0  # bytes dropped because the transmit buffer was full
        self.replay_bytes = 0  # the serve command sets --replay-bytes
        self._history = bytearray()  # the last output, for replay on attach
        self._since: dict[int, float] = {}  # id(client) -> attach time
        self.exclusive = False  # --exclusive: one writer at a time, the others are told
        self.writer: Client | None = None
        # Called with (data, client) for input that went into the line (--log-input).
        self.input_taps: list[Callable[[bytes, Client | None], None]] = []

    # Output side: the machine's serial sink.
    def sink(self, data: bytes) -> None:
        if threading.get_ident() == self._reactor_thread:
            self._tx_drain()  # in order after anything other threads printed before
            self._queue(data)
            return
        # A vCPU thread printed: through a fixed buffer onto the reactor, in order. As
        # __serial_putc() (xen/drivers/char/serial.c) does when its buffer fills: drop
        # characters until the buffer is half empty again. Xen prints nothing about them;
        # they are counted in `tx_dropped`.
        with self._tx_lock:
            kick = not self._tx
            if self._tx_quench and len(self._tx) > SERIAL_TX_BUFSIZE // 2:
                self.tx_dropped += len(data)
                return
            self._tx_quench = False
            room = SERIAL_TX_BUFSIZE - len(self._tx)
            if len(data) > room:
                self.tx_dropped += len(data) - room
                self._tx_quench = True
                data = data[:room]
            self._tx += data
        if kick and data:
            self.reactor.callFromThread(self._tx_drain)

    def _tx_drain(self) -> None:
        with self._tx_lock:
            data = bytes(self._tx)
            self._tx.clear()
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        # Output is gathered for the rest of this reactor turn and fanned out once: the dom0
        # shell echoes byte by byte, and a write per byte per client is most of the cost of
        # a fast paste. The log is written now, in order with anything else written to it.
        if not data:
            return
        self.bytes_out += len(data)
        if self.replay_bytes:
            self._history += data
            if len(self._history) > 2 * self.replay_bytes:  # trimmed now and then, not per byte
                del self._history[: -self.replay_bytes]
        if self.log is not None:
            try:
                self.log.write(data)
            except (OSError, ValueError) as e:  # disk full, file closed: keep serving
                self._log_failed(e)
        if not self._pending:
            self.reactor.callLater(0, self.flush)
        self._pending += data

    def flush(self) -> None:
        """Hand everything gathered so far to every client (and the log file to the OS)."""
        if self.log is not None:
            try:
                self.log.flush()
            except (OSError, ValueError) as e:
                self._log_failed(e)
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        for c in list(self.clients):
            try:
                c.deliver(data)
            except Exception:  # one broken client must not cost the others their output
                traceback.print_exc(file=sys.stderr)
                self.detach(c)

    def _log_failed(self, e: Exception) -> None:
        sys.stderr.write(f"xenconsole: log write failed ({e}); logging stopped\n")
        self.log = None

    # Client side.
    def replay(self) -> bytes:
        """The last `replay_bytes` of output, from the start of a line when one begins
        inside it (so a new client never starts mid-line or mid-escape-sequence)."""
        if not self.replay_bytes or not self._history:
            return b""
        tail = bytes(self._history[-self.replay_bytes :])
        if len(self._history) > self.replay_bytes:
            cut = tail.find(b"\n")
            if cut >= 0:
                tail = tail[cut + 1 :]
        return tail

    def attach(self, client: Client) -> None:
        if self.replay_bytes:
            self.flush()  # what is gathered is in the history: hand it to the others first
            back = self.replay()
            if back:
                client.deliver(back)
        self.clients.append(client)
        self._since[id(client)] = time.time()
        if self.on_first_attach is not None:
            cb, self.on_first_attach = self.on_first_attach, None
            cb()

    def detach(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        self._since.pop(id(client), None)
        if self.writer is client:
            self.writer = None

    def receive(self, data: bytes, client: Client | None = None) -> None:
        """Input from `client` (None: a caller that is no client, e.g. a test). A read-only
        client's input is dropped; in exclusive mode only the writer's goes in."""
        if client is not None:
            if getattr(client, "read_only", False):
                return
            if self.exclusive:
                if self.writer is None or self.writer not in self.clients:
                    self.writer = client
                elif self.writer is not client:
                    self._tell_held(client)
                    return
        for tap in self.input_taps:
            tap(data, client)
        self.on_input(data)

    def _tell_held(self, client: Client) -> None:
        """A second writer in exclusive mode: say who holds the line (to it alone)."""
        holder = self.writer
        since = time.strftime("%H:%M:%S", time.localtime(self._since.get(id(holder), 0)))
        msg = f"\r\n[xenconsole: line held by {holder.name} (rw) since {since}; read-only]\r\n"
        try:
            client.deliver(msg.encode())
        except Exception:
            traceback.print_exc(file=sys.stderr)

    def who_text(self, me: Client | None = None) -> str:
        """`who` as lines for a person: `[who] NAME rw|ro since HH:MM:SS[ writer][ (you)]`,
        each ending in CR LF (the control channel and telnet's AYT answer print this)."""
        lines = []
        for c, a in zip(list(self.clients), self.who(), strict=True):
            since = time.strftime("%H:%M:%S", time.localtime(a.since))
            extra = (" writer" if a.writer else "") + (" (you)" if c is me else "")
            lines.append(f"[who] {a.name} {a.mode} since {since}{extra}\r\n")
        return "".join(lines)

    def who(self) -> list[Attached]:
        """Who is attached, from where, rw or ro, since when: for the `who` menu key and the
        control channel's command."""
        return [
            Attached(
                c.name,
                "ro" if getattr(c, "read_only", False) else "rw",
                self._since.get(id(c), 0.0),
                self.exclusive and self.writer is c,
            )
            for c in self.clients
        ]
