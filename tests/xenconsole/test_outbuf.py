"""The per-client output buffer (xenconsole/outbuf.py) on its own: pass-through, dropping the
oldest whole chunks with a notice, escaped IACs kept whole, bounded control replies, pause
and resume order. A served host under the same abuse is tests/e2e/test_robustness.py."""

from __future__ import annotations

from xenconsole.outbuf import CHUNK, CONTROL_LIMIT, OutputBuffer, drop_notice


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, b: bytes) -> None:
        self.data += b


def test_outbuf_passes_through_while_unpaused():
    s = Sink()
    ob = OutputBuffer(s, limit=100)
    ob.deliver(b"abc")
    ob.send_control(b"\xff\xfb\x01")
    assert bytes(s.data) == b"abc\xff\xfb\x01"


def test_outbuf_drops_oldest_whole_chunks_and_says_so():
    s = Sink()
    ob = OutputBuffer(s, limit=32 * 1024)
    ob.pauseProducing()
    pieces = [bytes([65 + i % 26]) * 1000 for i in range(100)]  # 100 000 bytes
    for p in pieces:
        ob.deliver(p)
    assert ob.backlog_bytes <= 32 * 1024
    assert ob.dropped_total > 60_000
    assert s.data == b""
    ob.resumeProducing()
    kept = b"".join(pieces)[ob.dropped_total :]
    assert bytes(s.data) == drop_notice(ob.dropped_total) + kept
    assert ob.dropped_total == 100_000 - len(kept)
    assert ob.dropped_total % 1000 == 0  # whole deliveries only, never a split one


def test_outbuf_never_splits_an_escaped_iac():
    s = Sink()
    ob = OutputBuffer(s, limit=100)  # 14-byte deliveries are not merged at this limit
    ob.pauseProducing()
    for _ in range(50):
        ob.deliver(b"\xff\xff" * 7)
    ob.resumeProducing()
    body = bytes(s.data).split(b"***\r\n", 1)[1]
    assert len(body) == 98 and set(body) == {0xFF}


def test_outbuf_control_replies_are_bounded_while_paused():
    s = Sink()
    ob = OutputBuffer(s, limit=100)
    ob.pauseProducing()
    for _ in range(10_000):
        ob.send_control(b"\xff\xfc\x99")
    assert len(ob.control) <= CONTROL_LIMIT
    assert ob.control_dropped == 30_000 - len(ob.control)
    ob.resumeProducing()
    assert bytes(s.data) == b"\xff\xfc\x99" * (CONTROL_LIMIT // 3)


def test_outbuf_repauses_while_flushing_and_keeps_order():
    s = Sink()
    ob = OutputBuffer(s, limit=1 << 20)

    def write(b: bytes) -> None:
        s(b)
        if len(s.data) >= 4:
            ob.pauseProducing()

    ob._write = write
    ob.pauseProducing()
    for i in range(10):
        ob.deliver(bytes([48 + i]) * CHUNK)  # one chunk each
    ob.resumeProducing()
    assert len(s.data) == CHUNK and ob.paused  # stopped after the first chunk
    while ob.backlog:
        s.data.clear()
        ob.resumeProducing()
    assert ob.dropped_total == 0


def test_outbuf_stopped_and_reset():
    s = Sink()
    ob = OutputBuffer(s, limit=100)
    ob.pauseProducing()
    ob.deliver(b"x" * 50)
    ob.reset()
    assert not ob.paused and ob.backlog_bytes == 0
    ob.deliver(b"y")
    assert bytes(s.data) == b"y"
    ob.stopProducing()
    ob.deliver(b"z")
    ob.resumeProducing()
    assert bytes(s.data) == b"y"


def test_outbuf_trims_one_huge_chunk_at_a_line_end():
    s = Sink()
    ob = OutputBuffer(s, limit=1000)
    ob.pauseProducing()
    lines = [f"(XEN) line {i:05d} \xff\xff end\r\n".encode("latin-1") for i in range(1000)]
    ob.deliver(b"".join(lines))  # one reactor turn's output, far over the limit
    assert ob.backlog_bytes <= 1000
    ob.resumeProducing()
    notice = drop_notice(ob.dropped_total)
    assert s.data.startswith(notice)
    rest = bytes(s.data[len(notice) :])
    assert rest == b"".join(lines)[-len(rest) :]
    assert rest.startswith(b"(XEN) line ")  # whole lines only
    assert len(rest) + ob.dropped_total == sum(map(len, lines))
