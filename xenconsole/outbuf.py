"""Per-client flow control: a push producer with a bounded backlog.

While the client's socket keeps up, output goes straight to the transport. When Twisted's
write buffer fills it pauses us; we then keep at most `limit` bytes, dropping the oldest,
and on resume tell that client (and only that client) how much it lost.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

DEFAULT_LIMIT = 256 * 1024


def drop_notice(n: int) -> bytes:
    msg = f"*** xenconsole: output too fast for this client, {n} bytes dropped ***"
    return f"\r\n{msg}\r\n".encode()


@implementer(IPushProducer)
class OutputBuffer:
    def __init__(self, write, limit: int = DEFAULT_LIMIT) -> None:
        self._write = write
        self.limit = limit
        self.paused = False
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.dropped = 0
        self.dropped_total = 0
        self.closed = False

    def deliver(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self.paused:
            self._write(data)
            return
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        while self.backlog_bytes > self.limit:
            old = self.backlog.popleft()
            over = self.backlog_bytes - self.limit
            if len(old) > over:  # keep the newest part of a partly dropped chunk
                self.backlog.appendleft(old[over:])
                old = old[:over]
            self.backlog_bytes -= len(old)
            self.dropped += len(old)
            self.dropped_total += len(old)

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.dropped:
            n, self.dropped = self.dropped, 0
            self._write(drop_notice(n))
        while self.backlog and not self.paused:
            chunk = self.backlog.popleft()
            self.backlog_bytes -= len(chunk)
            self._write(chunk)

    def stopProducing(self) -> None:
        self.closed = True
        self.backlog.clear()
        self.backlog_bytes = 0
