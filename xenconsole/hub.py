"""The console hub: one serial line shared by every attached client.

Every client's input enters the machine through `Console.serial_rx`; every output byte the
machine sends to the serial line is fanned out here to every client (and the log file).
Transports (xenconsole/transports/) are backends that only call `attach`, `detach` and
`receive`, and implement `deliver(bytes)`.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from typing import BinaryIO, NamedTuple, Protocol


class Client(Protocol):
    name: str

    def deliver(self, data: bytes) -> None: ...


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

    # Output side: the machine's serial sink.
    def sink(self, data: bytes) -> None:
        if threading.get_ident() == self._reactor_thread:
            self._queue(data)
        else:  # a vCPU thread printed: hop onto the reactor, preserving order
            self.reactor.callFromThread(self._queue, data)

    def _queue(self, data: bytes) -> None:
        # Output is gathered for the rest of this reactor turn and fanned out once: the dom0
        # shell echoes byte by byte, and a write per byte per client is most of the cost of
        # a fast paste. The log is written now, in order with anything else written to it.
        if not data:
            return
        self.bytes_out += len(data)
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
    def attach(self, client: Client) -> None:
        self.clients.append(client)
        if self.on_first_attach is not None:
            cb, self.on_first_attach = self.on_first_attach, None
            cb()

    def detach(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)

    def receive(self, data: bytes) -> None:
        self.on_input(data)
