"""RFC 2217 (xenconsole/transports/rfc2217.py): the protocol against a StringTransport; the
end-to-end run with pyserial and labgrid is tests/e2e/test_rfc2217.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serial import rfc2217 as r
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from xenconsole.transports.rfc2217 import ATTACH_FALLBACK, SB_MAX, RFC2217Factory

IAC, SB, SE = b"\xff", b"\xfa", b"\xf0"
COM = r.COM_PORT_OPTION


class FakeHub:
    def __init__(self) -> None:
        self.clients: list = []
        self.received = bytearray()
        self.breaks: list[str] = []

    def attach(self, c) -> None:
        self.clients.append(c)

    def detach(self, c) -> None:
        self.clients.remove(c)

    def receive(self, data: bytes, client=None) -> None:
        self.received += data

    def on_break(self, c) -> None:
        self.breaks.append(c.name)


def sb(option: bytes, value: bytes = b"") -> bytes:
    return IAC + SB + COM + option + value.replace(IAC, IAC + IAC) + IAC + SE


def connect(clock: Clock):
    hub = FakeHub()
    proto = RFC2217Factory(hub, clock=clock).buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    return hub, proto, tr


@pytest.fixture
def conn():
    clock = Clock()
    hub, proto, tr = connect(clock)
    clock.advance(ATTACH_FALLBACK)
    assert hub.clients == [proto]
    tr.clear()  # the initial WILL/DO requests
    return hub, proto, tr


def test_joins_the_line_after_pyserials_open_purges() -> None:
    clock = Clock()
    hub, proto, tr = connect(clock)
    assert proto.name == "rfc2217:192.168.1.1:54321"
    assert tr.value().startswith(IAC)  # negotiation requests went out at once
    proto.dataReceived(sb(r.PURGE_DATA, r.PURGE_RECEIVE_BUFFER))
    assert hub.clients == []  # the client still drops what it receives
    proto.dataReceived(sb(r.PURGE_DATA, r.PURGE_TRANSMIT_BUFFER))
    assert hub.clients == [proto]
    clock.advance(ATTACH_FALLBACK)
    assert hub.clients == [proto]


def test_joins_on_first_keystroke_or_after_a_delay() -> None:
    clock = Clock()
    hub, proto, _tr = connect(clock)
    proto.dataReceived(b"x")
    assert hub.clients == [proto] and bytes(hub.received) == b"x"
    hub2, proto2, _tr2 = connect(clock)
    clock.advance(ATTACH_FALLBACK - 0.01)
    assert hub2.clients == []
    clock.advance(0.01)
    assert hub2.clients == [proto2]
    hub3, proto3, _tr3 = connect(clock)
    proto3.connectionLost(None)
    clock.advance(ATTACH_FALLBACK)
    assert hub3.clients == []


def test_baud_rate_and_line_settings_are_reported_back(conn) -> None:
    _hub, proto, tr = conn
    proto.dataReceived(sb(r.SET_BAUDRATE, struct.pack("!I", 9600)))
    assert tr.value() == sb(r.SERVER_SET_BAUDRATE, struct.pack("!I", 9600))
    assert proto.uart.baudrate == 9600
    tr.clear()
    proto.dataReceived(sb(r.SET_DATASIZE, b"\x07") + sb(r.SET_PARITY, b"\x03"))
    proto.dataReceived(sb(r.SET_STOPSIZE, b"\x02"))
    assert tr.value() == (
        sb(r.SERVER_SET_DATASIZE, b"\x07")
        + sb(r.SERVER_SET_PARITY, b"\x03")
        + sb(r.SERVER_SET_STOPSIZE, b"\x02")
    )
    assert (proto.uart.bytesize, proto.uart.parity, proto.uart.stopbits) == (7, "E", 2)
    tr.clear()
    proto.dataReceived(sb(r.SET_BAUDRATE, struct.pack("!I", 0)))  # 0 = query
    assert tr.value() == sb(r.SERVER_SET_BAUDRATE, struct.pack("!I", 9600))


def test_break_reaches_the_hub_and_is_acknowledged(conn) -> None:
    hub, proto, tr = conn
    proto.dataReceived(sb(r.SET_CONTROL, r.SET_CONTROL_BREAK_ON))
    proto.dataReceived(sb(r.SET_CONTROL, r.SET_CONTROL_BREAK_OFF))
    assert hub.breaks == [proto.name]
    assert tr.value() == sb(r.SERVER_SET_CONTROL, r.SET_CONTROL_BREAK_ON) + sb(
        r.SERVER_SET_CONTROL, r.SET_CONTROL_BREAK_OFF
    )


def test_telnet_iac_brk_is_a_break_too(conn) -> None:
    hub, proto, tr = conn
    proto.dataReceived(b"a" + IAC + b"\xf3" + b"b" + IAC + b"\xf1")  # BRK, then NOP
    assert hub.breaks == [proto.name]
    assert bytes(hub.received) == b"ab"
    assert tr.value() == b""


def test_modem_lines_are_a_live_null_modem(conn) -> None:
    _hub, proto, tr = conn
    proto.dataReceived(sb(r.NOTIFY_MODEMSTATE))
    state = r.MODEMSTATE_MASK_CTS | r.MODEMSTATE_MASK_DSR | r.MODEMSTATE_MASK_CD
    deltas = (
        r.MODEMSTATE_MASK_CTS_CHANGE | r.MODEMSTATE_MASK_DSR_CHANGE | r.MODEMSTATE_MASK_CD_CHANGE
    )
    assert tr.value() == sb(r.SERVER_NOTIFY_MODEMSTATE, bytes([state | deltas]))
    tr.clear()
    proto.dataReceived(sb(r.SET_CONTROL, r.SET_CONTROL_DTR_OFF))
    assert tr.value() == sb(r.SERVER_SET_CONTROL, r.SET_CONTROL_DTR_OFF)
    assert proto.uart.dtr is False


def test_purge_is_answered(conn) -> None:
    _hub, proto, tr = conn
    proto.dataReceived(sb(r.PURGE_DATA, r.PURGE_BOTH_BUFFERS))
    assert tr.value() == sb(r.SERVER_PURGE_DATA, r.PURGE_BOTH_BUFFERS)


def test_data_is_unescaped_in_and_escaped_out(conn) -> None:
    hub, proto, tr = conn
    proto.dataReceived(b"ls\r" + IAC + IAC + b"x")
    assert bytes(hub.received) == b"ls\r\xffx"
    proto.deliver(b"a\xffb")
    assert tr.value() == b"a\xff\xffb"


def test_oversized_subnegotiation_is_bounded_and_dropped(conn) -> None:
    hub, proto, tr = conn
    proto.dataReceived(IAC + SB + COM + r.SET_BAUDRATE + b"\x00" * 100_000)
    assert proto.pm.suboption is not None and len(proto.pm.suboption) <= SB_MAX
    proto.dataReceived(IAC + SE + b"ok")
    assert tr.value() == b""  # the monster was not answered
    assert bytes(hub.received) == b"ok"
    assert proto.pm.oversized == 1
    proto.dataReceived(sb(r.SET_BAUDRATE, struct.pack("!I", 19200)))
    assert tr.value() == sb(r.SERVER_SET_BAUDRATE, struct.pack("!I", 19200))


@pytest.mark.parametrize(
    "bad",
    [
        sb(r.SET_BAUDRATE, b"\x01"),  # truncated
        sb(r.SET_PARITY, b"\x09"),  # no such parity
        sb(r.SET_STOPSIZE, b"\x07"),
        sb(r.SET_DATASIZE, b"\x02"),
        sb(r.SET_LINESTATE_MASK),
        IAC + SB + IAC + SE,  # empty
        IAC + b"\xec",  # IAC EOF, an unknown command
    ],
)
def test_malformed_input_keeps_the_session(conn, bad: bytes) -> None:
    hub, proto, _tr = conn
    proto.dataReceived(bad + b"still here")
    assert bytes(hub.received) == b"still here"
    assert hub.clients == [proto]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_any_bytes_in_any_split_keep_the_session(chunks: list[bytes]) -> None:
    clock = Clock()
    hub, proto, _tr = connect(clock)
    clock.advance(ATTACH_FALLBACK)
    for chunk in chunks:
        proto.dataReceived(chunk)
    assert hub.clients == [proto]
    assert proto.pm.suboption is None or len(proto.pm.suboption) <= SB_MAX
    # Data without IAC passes through untouched afterwards (after closing any open SB).
    hub.received.clear()
    proto.dataReceived(IAC + SE + b"\x00" + b"after")
    assert bytes(hub.received).endswith(b"after")


def test_answers_to_a_client_that_never_reads_are_bounded(conn) -> None:
    _hub, proto, tr = conn
    proto.out.pauseProducing()  # the client's socket is full
    tr.clear()
    for _ in range(10_000):
        proto.dataReceived(sb(r.NOTIFY_MODEMSTATE))
    assert tr.value() == b""
    assert len(proto.out.control) <= 4096
    assert proto.out.control_dropped > 0


def test_disconnect_detaches(conn) -> None:
    hub, proto, _tr = conn
    proto.connectionLost(None)
    assert hub.clients == []
    proto.deliver(b"late output")  # harmless after the end
