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

# The serial driver's asynchronous transmit buffer: CONFIG_SERIAL_TX_BUFSIZE's default
# (xen/drivers/char/Kconfig). Output printed on a vCPU thread waits here for the reactor.
SERIAL_TX_BUFSIZE = 32768


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
        self._tx = bytearray()  # printed on other threads, not yet on the reactor
        self._tx_lock = threading.Lock()
        self._tx_quench = False
        self.tx_dropped = 0  # bytes dropped because the transmit buffer was full

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
