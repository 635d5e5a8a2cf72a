"""Per-client flow control: a push producer with a bounded backlog.

While the client's socket keeps up, output goes straight to the transport. When Twisted's
write buffer passes its high-water mark (64 KiB) it pauses us; we then keep at most `limit`
bytes, dropping the oldest, and on resume tell that client (and only that client) how much
it lost. Nothing else ever waits for a slow client.

Drops are whole chunks, or a chunk's head up to the end of a line, never an arbitrary
part: a chunk may hold an escaped telnet `IAC IAC`, and cutting between the two would put a
stray command on the wire. (0xFF is never a line end, so a cut after `\n` is always safe.)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

DEFAULT_LIMIT = 256 * 1024
# Small writes (echo is one byte at a time) are merged up to this size, so a full backlog is
# a few dozen objects rather than a quarter of a million.
CHUNK = 16 * 1024
# After a flush that moved nothing, wait this long before trying again (a stalled client
# would otherwise cost a send() per delivery).
FLUSH_RETRY = 0.005
# Protocol replies (telnet negotiation, AYT) queued while paused; a client that floods us
# with requests and never reads the answers cannot grow this.
CONTROL_LIMIT = 4096


def flusher(transport) -> Callable[[], None]:
    """A `flush` for OutputBuffer: the transport's own write handler, called early.

    Any error it returns is seen again by the reactor on its next turn, which then closes
    the connection as usual.
    """

    def flush() -> None:
        if transport.connected and not transport.disconnecting and hasattr(transport, "doWrite"):
            transport.doWrite()

    return flush


def drop_notice(n: int) -> bytes:
    msg = f"*** xenconsole: output too fast for this client, {n} bytes dropped ***"
    return f"\r\n{msg}\r\n".encode()


@implementer(IPushProducer)
class OutputBuffer:
    def __init__(
        self,
        write: Callable[[bytes], None],
        limit: int = DEFAULT_LIMIT,
        flush: Callable[[], object] | None = None,
    ) -> None:
        """`write` is the transport's write; `flush`, if given, hands the transport's buffer
        to the kernel now (a FileDescriptor's `doWrite`)."""
        self._write = write
        self._flush = flush
        self._flush_failed_at = -1.0
        self.limit = limit
        self._merge = max(1, min(CHUNK, limit // 8))  # drops stay fine-grained for small limits
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
        if tail is not None and len(tail) + len(data) <= self._merge:
            tail += data
        else:
            self.backlog.append(bytearray(data))
        self.backlog_bytes += len(data)
        if self.backlog_bytes > self.limit:
            self._relieve()
        while self.backlog_bytes > self.limit:
            head = self.backlog[0]
            over = self.backlog_bytes - self.limit
            if len(head) <= over:
                cut = len(head)
            else:  # only part of the oldest chunk must go: cut just after a line end
                nl = head.find(b"\n", over - 1)
                cut = nl + 1 if nl >= 0 else len(head)
            if cut == len(head):
                self.backlog.popleft()
            else:
                del head[:cut]
            self.backlog_bytes -= cut
            self.dropped += cut
            self.dropped_total += cut

    def _relieve(self) -> None:
        """Before dropping anything, let the kernel take what it can.

        Twisted sends only between reactor turns, so output produced in one turn (a long
        `;` chain, a big key dump) would overflow even a fast client. A client that really
        stalls has full socket buffers, and then this moves nothing.
        """
        if self._flush is None or self.closed:
            return
        now = time.monotonic()
        if now - self._flush_failed_at < FLUSH_RETRY:
            return
        for _ in range(16):
            before = self.backlog_bytes
            try:
                self._flush()  # may call resumeProducing, which moves backlog to the transport
            except Exception:  # the reactor sees the same error on its own turn
                self._flush_failed_at = now
                return
            if not self.paused and not self.backlog:
                return
            if self.backlog_bytes >= before:
                self._flush_failed_at = now
                return

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
