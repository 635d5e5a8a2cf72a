"""Per-client flow control: a push producer with a bounded backlog.

While the client's socket keeps up, output goes straight to the transport. When Twisted's
write buffer passes its high-water mark (64 KiB) it pauses us; we then keep at most `limit`
bytes, dropping the oldest, and on resume tell that client (and only that client) how much
it lost. Nothing else ever waits for a slow client.

Drops are whole chunks, never part of one: a chunk may hold an escaped telnet `IAC IAC` or
an ANSI sequence, and cutting it would put a stray command on the wire.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

DEFAULT_LIMIT = 256 * 1024
# Small writes (echo is one byte at a time) are merged up to this size, so a full backlog is
# a few dozen objects rather than a quarter of a million.
CHUNK = 16 * 1024
# Protocol replies (telnet negotiation, AYT) queued while paused; a client that floods us
# with requests and never reads the answers cannot grow this.
CONTROL_LIMIT = 4096


def drop_notice(n: int) -> bytes:
    msg = f"*** xenconsole: output too fast for this client, {n} bytes dropped ***"
    return f"\r\n{msg}\r\n".encode()


@implementer(IPushProducer)
class OutputBuffer:
    def __init__(self, write: Callable[[bytes], None], limit: int = DEFAULT_LIMIT) -> None:
        self._write = write
        self.limit = limit
        self.paused = False
        self.backlog: deque[bytearray] = deque()
        self.backlog_bytes = 0
        self.control = bytearray()
        self.dropped = 0
        self.dropped_total = 0
        self.control_dropped = 0
        self.pauses = 0
        self.closed = False

    def deliver(self, data: bytes) -> None:
        """Console output for this client."""
        if self.closed or not data:
            return
        if not self.paused:
            self._write(data)
            return
        tail = self.backlog[-1] if self.backlog else None
        if tail is not None and len(tail) + len(data) <= CHUNK:
            tail += data
        else:
            self.backlog.append(bytearray(data))
        self.backlog_bytes += len(data)
        # Oldest whole chunks go first; the newest chunk always stays, so a single chunk
        # bigger than the limit is kept (it is bounded by one reactor turn's output).
        while self.backlog_bytes > self.limit and len(self.backlog) > 1:
            old = self.backlog.popleft()
            self.backlog_bytes -= len(old)
            self.dropped += len(old)
            self.dropped_total += len(old)

    def send_control(self, data: bytes) -> None:
        """A protocol reply: written now, or queued (bounded) until the client reads again."""
        if self.closed or not data:
            return
        if not self.paused:
            self._write(data)
        elif len(self.control) + len(data) <= CONTROL_LIMIT:
            self.control += data
        else:
            self.control_dropped += len(data)

    def reset(self) -> None:
        """Forget everything queued and run unpaused (a PTY whose client went away)."""
        self.paused = False
        self.backlog.clear()
        self.backlog_bytes = 0
        self.control.clear()
        self.dropped = 0

    # IPushProducer
    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        if self.closed:
            return
        self.paused = False
        if self.control:
            ctl = bytes(self.control)
            self.control.clear()
            self._write(ctl)
        if self.dropped:
            n, self.dropped = self.dropped, 0
            self._write(drop_notice(n))
        while self.backlog and not self.paused:
            chunk = self.backlog.popleft()
            self.backlog_bytes -= len(chunk)
            self._write(bytes(chunk))

    def stopProducing(self) -> None:
        self.closed = True
        self.backlog.clear()
        self.backlog_bytes = 0
        self.control.clear()
