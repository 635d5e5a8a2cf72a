"""The sans-IO telnet codec in both roles, fed bytes directly: no sockets, no reactor."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenconsole.telnet_codec import (
    AYT,
    BINARY,
    BRK,
    CLIENT,
    DO,
    DONT,
    ECHO,
    IAC,
    IP,
    NAWS,
    NOP,
    SB,
    SB_MAX,
    SE,
    SERVER,
    SGA,
    WILL,
    WONT,
    TelnetCodec,
    escape,
)


class Wire:
    """A codec with everything it produces recorded."""

    def __init__(self, start: bool = False, role=SERVER) -> None:
        self.sent = bytearray()
        self.data = bytearray()
        self.calls: list[bytes] = []
        self.breaks = 0
        self.naws: list[tuple[int, int]] = []
        self.codec = TelnetCodec(
            send=self.sent.extend,
            on_data=self._data,
            on_break=self._break,
            on_naws=lambda w, h: self.naws.append((w, h)),
            role=role,
        )
        if start:
            self.codec.start()

    def _data(self, b: bytes) -> None:
        self.calls.append(b)
        self.data += b

    def _break(self) -> None:
        self.breaks += 1

    def feed(self, *chunks: bytes) -> Wire:
        for c in chunks:
            self.codec.feed(c)
        return self

    def take_sent(self) -> bytes:
        out = bytes(self.sent)
        self.sent.clear()
        return out


def iac(*b: int) -> bytes:
    return bytes([IAC, *b])


# ---- data path -------------------------------------------------------------------------


def test_plain_bytes_pass_untouched():
    w = Wire().feed(b"xl list\x01\x01\x01\x7f\x1b[A")
    assert bytes(w.data) == b"xl list\x01\x01\x01\x7f\x1b[A"
    assert w.sent == b""


def test_iac_iac_is_one_ff_byte():
    w = Wire().feed(b"a" + iac(IAC) + b"b")
    assert bytes(w.data) == b"a\xffb"


@pytest.mark.parametrize("cmd", [0xEC, 0x01, 0x00, 0x7F, 0xEF, 0xEE, 0xED, NOP, 0xF2])
def test_iac_unknown_command_is_ignored_and_session_kept(cmd):
    w = Wire().feed(b"ab" + iac(cmd) + b"cd", b"ef")
    assert bytes(w.data) == b"abcdef"
    assert w.sent == b""


def test_iac_se_outside_subnegotiation_is_ignored():
    w = Wire().feed(b"x" + iac(SE) + b"y")
    assert bytes(w.data) == b"xy"


def test_iac_split_at_every_position():
    stream = b"ab" + iac(IAC) + b"c" + iac(0xEC) + b"d" + iac(DO, 99) + b"e" + iac(NOP) + b"f"
    whole = Wire().feed(stream)
    assert bytes(whole.data) == b"ab\xffcdef"
    assert whole.sent == iac(WONT, 99)
    for cut in range(len(stream) + 1):
        w = Wire().feed(stream[:cut], stream[cut:])
        assert bytes(w.data) == b"ab\xffcdef", cut
        assert w.sent == iac(WONT, 99), cut
    # one byte per packet
    w = Wire().feed(*[bytes([b]) for b in stream])
    assert bytes(w.data) == b"ab\xffcdef"


def test_bare_cr_at_packet_end_is_delivered_at_once():
    w = Wire().feed(b"xl list\r")
    assert bytes(w.data) == b"xl list\r"
    w = Wire().feed(b"\r")
    assert w.calls == [b"\r"]


@pytest.mark.parametrize("tail", [b"\n", b"\x00"])
def test_cr_lf_and_cr_nul_are_one_cr(tail):
    w = Wire().feed(b"ls\r" + tail + b"pwd\r" + tail)
    assert bytes(w.data) == b"ls\rpwd\r"


@pytest.mark.parametrize("tail", [b"\n", b"\x00"])
def test_cr_lf_and_cr_nul_split_across_packets(tail):
    w = Wire().feed(b"ls\r")
    assert bytes(w.data) == b"ls\r"  # the CR did not wait for the next packet
    w.feed(tail + b"x")
    assert bytes(w.data) == b"ls\rx"
    w.feed(b"\r", tail, b"\r", b"\r", tail)
    assert bytes(w.data) == b"ls\rx\r\r\r"


def test_lone_lf_and_nul_without_cr_pass():
    w = Wire().feed(b"a\nb\x00c")
    assert bytes(w.data) == b"a\nb\x00c"


def test_cr_cr_is_two_enters():
    w = Wire().feed(b"\r\r\n\r")
    assert bytes(w.data) == b"\r\r\r"


def test_binary_mode_passes_cr_lf_untouched():
    w = Wire().feed(iac(WILL, BINARY))
    assert w.take_sent() == iac(DO, BINARY)
    w.feed(b"a\r\nb\r\x00")
    assert bytes(w.data) == b"a\r\nb\r\x00"


def test_commands_with_meaning():
    w = Wire().feed(b"a" + iac(IP) + b"b" + iac(BRK) + iac(AYT))
    assert bytes(w.data) == b"a\x03b"
    assert w.calls[:2] == [b"a", b"\x03"]  # ordered: data before the command stays before
    assert w.breaks == 1
    assert w.sent == b"\r\n[yes]\r\n"


# ---- subnegotiation --------------------------------------------------------------------


def test_naws():
    w = Wire().feed(iac(SB, NAWS, 0, 80, 0, 24) + iac(SE) + b"x")
    assert w.naws == [(80, 24)]
    assert w.codec.window == (80, 24)
    assert bytes(w.data) == b"x"


def test_naws_with_doubled_iac():
    # 255 columns, 511 rows: every 0xFF inside SB arrives doubled
    body = bytes([NAWS, 0, IAC, IAC, 1, IAC, IAC])
    w = Wire().feed(iac(SB) + body + iac(SE))
    assert w.naws == [(255, 0x1FF)]


def test_naws_split_at_every_position():
    stream = b"a" + iac(SB, NAWS, 0, IAC, IAC, 0, 50) + iac(SE) + b"b"
    for cut in range(len(stream) + 1):
        w = Wire().feed(stream[:cut], stream[cut:])
        assert w.naws == [(255, 50)], cut
        assert bytes(w.data) == b"ab", cut


@pytest.mark.parametrize(
    "body", [bytes([NAWS, 0, 80]), bytes([NAWS, 0, 80, 0, 24, 0]), bytes([NAWS]), b""]
)
def test_naws_wrong_length_is_ignored(body):
    w = Wire().feed(iac(SB) + body + iac(SE) + b"ok")
    assert w.naws == []
    assert bytes(w.data) == b"ok"


def test_unknown_subnegotiation_is_ignored():
    w = Wire().feed(iac(SB, 24, 0) + b"xterm" + iac(SE) + b"ok")
    assert bytes(w.data) == b"ok"
    assert w.sent == b""


def test_sb_without_se_is_bounded_and_data_flows_again():
    w = Wire().feed(iac(SB, NAWS))
    junk = b"z" * (SB_MAX - 1)  # fills the buffer: NAWS + SB_MAX-1 bytes
    w.feed(junk)
    assert bytes(w.data) == b""
    assert len(w.codec._sb) <= SB_MAX
    # everything past the cap is data again, byte for byte
    w.feed(b"xl list\r")
    assert bytes(w.data) == b"xl list\r"
    assert len(w.codec._sb) == 0


def test_sb_without_se_huge_stays_capped():
    w = Wire().feed(iac(SB, 99))
    for _ in range(100):
        w.feed(b"q" * 10_000)
        assert len(w.codec._sb) <= SB_MAX
    # the option byte and SB_MAX - 1 bytes were swallowed, not one more
    assert len(w.data) == 100 * 10_000 - (SB_MAX - 1)
    w.feed(b"\r")
    assert w.data.endswith(b"q\r")


def test_iac_command_inside_sb_ends_it():
    # A client that forgot SE: IAC <cmd> ends the SB and the command still counts.
    w = Wire().feed(iac(SB, NAWS, 0, 80) + iac(DO, 99) + b"data")
    assert w.sent == iac(WONT, 99)
    assert bytes(w.data) == b"data"
    assert w.naws == []


# ---- negotiation -----------------------------------------------------------------------


def test_start_asks_for_character_mode():
    w = Wire(start=True)
    assert w.take_sent() == iac(WILL, ECHO) + iac(WILL, SGA) + iac(DO, NAWS)


def test_acknowledgements_get_no_reply():
    w = Wire(start=True)
    w.take_sent()
    w.feed(iac(DO, ECHO) + iac(DO, SGA) + iac(WILL, NAWS))
    assert w.take_sent() == b""
    assert w.codec.us == {ECHO: True, SGA: True}
    assert w.codec.him == {NAWS: True}
    # the same again: still nothing (no reply loops)
    w.feed(iac(DO, ECHO) + iac(DO, SGA) + iac(WILL, NAWS))
    assert w.take_sent() == b""


def test_refusal_of_our_requests_gets_no_reply():
    w = Wire(start=True)
    w.take_sent()
    w.feed(iac(DONT, ECHO) + iac(DONT, SGA) + iac(WONT, NAWS))
    assert w.take_sent() == b""
    assert not w.codec.us.get(ECHO)
    assert not w.codec.him.get(NAWS)


def test_unknown_do_gets_wont_and_unknown_will_gets_dont():
    w = Wire(start=True)
    w.take_sent()
    w.feed(iac(DO, 0x99) + iac(WILL, 0x98) + iac(WILL, 34) + iac(DO, 6))
    assert w.take_sent() == iac(WONT, 0x99) + iac(DONT, 0x98) + iac(DONT, 34) + iac(WONT, 6)
    # their answers to our refusals are acknowledgements: no reply
    w.feed(iac(WONT, 0x98) + iac(DONT, 0x99) + iac(WONT, 34) + iac(DONT, 6))
    assert w.take_sent() == b""


def test_client_initiated_supported_options_are_agreed_once():
    w = Wire()
    w.feed(iac(DO, SGA) + iac(WILL, NAWS) + iac(DO, SGA))
    assert w.take_sent() == iac(WILL, SGA) + iac(DO, NAWS)


def test_disabling_an_enabled_option_is_acknowledged_once():
    w = Wire(start=True)
    w.feed(iac(DO, ECHO) + iac(WILL, NAWS))
    w.take_sent()
    w.feed(iac(DONT, ECHO) + iac(WONT, NAWS))
    assert w.take_sent() == iac(WONT, ECHO) + iac(DONT, NAWS)
    w.feed(iac(DONT, ECHO) + iac(WONT, NAWS))
    assert w.take_sent() == b""


def converse(a: TelnetCodec, a_out: bytearray, b: TelnetCodec, b_out: bytearray) -> None:
    """Start both ends and pass what each sends to the other until neither has more."""
    a.start()
    b.start()
    for _ in range(10):
        if not a_out and not b_out:
            break
        x, y = bytes(a_out), bytes(b_out)
        a_out.clear()
        b_out.clear()
        b.feed(x)
        a.feed(y)
    assert a_out == b"" and b_out == b""


def test_two_codecs_talking_to_each_other_settle():
    """Our server codec against a peer that answers like us: the exchange must end."""
    a_out, b_out = bytearray(), bytearray()
    a = TelnetCodec(send=a_out.extend, on_data=lambda d: None)
    b = TelnetCodec(send=b_out.extend, on_data=lambda d: None)
    converse(a, a_out, b, b_out)


def test_outgoing_ff_is_doubled():
    assert escape(b"\xff") == b"\xff\xff"
    assert escape(b"a\xff\xffb\r\n") == b"a\xff\xff\xff\xffb\r\n"
    assert escape(b"plain\r\n") == b"plain\r\n"
    # and the codec reads back exactly what was escaped
    payload = bytes(range(256))
    w = Wire().feed(escape(payload.replace(b"\r", b"")))
    assert bytes(w.data) == payload.replace(b"\r", b"")


# ---- property: chunking never changes the application bytes ----------------------------

_tokens = st.one_of(
    st.binary(min_size=1, max_size=20),
    st.sampled_from(
        [
            b"\r",
            b"\r\n",
            b"\r\x00",
            iac(IAC),
            iac(0xEC),
            iac(0x01),
            iac(NOP),
            iac(IP),
            iac(AYT),
            iac(DO, ECHO),
            iac(DO, 0x99),
            iac(WILL, NAWS),
            iac(WONT, NAWS),
            iac(WILL, 0x42),
            iac(DO, NAWS),  # the client role answers with its window
            iac(DONT, NAWS),
            iac(WILL, ECHO),
            iac(SB, NAWS, 0, 80, 0, 24) + iac(SE),
            iac(SB, NAWS, 0, IAC, IAC, 0, 24) + iac(SE),
            iac(SB, 24) + b"xterm",
            iac(SE),
        ]
    ),
)


def _run(chunks: list[bytes], role=SERVER) -> tuple[bytes, bytes, list[tuple[int, int]]]:
    w = Wire(start=True, role=role)
    w.codec.set_window(80, 24)
    w.feed(*chunks)
    return bytes(w.data), bytes(w.sent), w.naws


@pytest.mark.parametrize("role", [SERVER, CLIENT], ids=lambda r: r.name)
@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(_tokens, max_size=40), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_gives_the_same_bytes(role, tokens, cuts):
    stream = b"".join(tokens)
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in positions:
        chunks.append(stream[prev:p])
        prev = p
    chunks.append(stream[prev:])
    assert _run(chunks, role) == _run([stream], role)
    assert _run([bytes([b]) for b in stream], role) == _run([stream], role)


@pytest.mark.parametrize("role", [SERVER, CLIENT], ids=lambda r: r.name)
@settings(max_examples=200, deadline=None)
@given(stream=st.binary(max_size=600), cut=st.integers(0, 600))
def test_random_bytes_never_raise_and_chunking_is_irrelevant(role, stream, cut):
    cut %= len(stream) + 1
    assert _run([stream[:cut], stream[cut:]], role) == _run([stream], role)


# ---- the client role -------------------------------------------------------------------


def test_client_waits_for_the_server_and_agrees_to_character_mode():
    w = Wire(start=True, role=CLIENT)
    assert w.take_sent() == b""  # the server leads
    w.codec.set_window(100, 30)
    assert w.take_sent() == b""  # no NAWS before the server asks for it
    w.feed(iac(WILL, ECHO) + iac(WILL, SGA) + iac(DO, NAWS) + iac(DO, 0x18))
    naws = iac(SB, NAWS, 0, 100, 0, 30) + iac(SE)
    assert w.take_sent() == iac(DO, ECHO) + iac(DO, SGA) + iac(WILL, NAWS) + naws + iac(WONT, 24)
    assert w.codec.him == {ECHO: True, SGA: True} and w.codec.us == {NAWS: True}
    w.feed(iac(WILL, ECHO) + iac(DO, NAWS))  # said again: no answer, no loop
    assert w.take_sent() == b""


def test_client_reports_window_changes_with_ff_doubled():
    w = Wire(role=CLIENT).feed(iac(DO, NAWS))
    w.take_sent()
    w.codec.set_window(255, 40)
    assert w.take_sent() == iac(SB, NAWS, 0, IAC, IAC, 0, 40) + iac(SE)
    w.codec.set_window(255, 40)  # unchanged: nothing sent
    assert w.take_sent() == b""
    w.feed(iac(DONT, NAWS))
    assert w.take_sent() == iac(WONT, NAWS)
    w.codec.set_window(80, 24)  # the server no longer wants it
    assert w.take_sent() == b""


def test_client_receives_console_bytes_untouched():
    w = Wire(role=CLIENT).feed(b"(XEN) a\r\n", b"b\r", b"\x00c\r", b"\n" + iac(IAC))
    assert bytes(w.data) == b"(XEN) a\r\nb\r\x00c\r\n\xff"
    # a terminal's commands mean nothing coming from the host: no data, no break, no reply
    w.feed(iac(IP) + iac(BRK) + iac(AYT) + b"!")
    assert bytes(w.data).endswith(b"\xff!") and w.breaks == 0 and w.sent == b""
    w.feed(iac(SB, NAWS, 0, 80, 0, 24) + iac(SE))  # the host has no window to report
    assert w.naws == [] and w.codec.window is None


def test_client_encodes_nvt_and_break():
    c = Wire(role=CLIENT).codec
    assert c.encode(b"ls\r\xff") == b"ls\r\x00\xff\xff"
    assert c.encode(b"a\r\nb") == b"a\r\nb"
    c.feed(iac(DO, BINARY))
    assert c.encode(b"ls\r") == b"ls\r"  # BINARY: CR as it is
    assert Wire().codec.encode(b"x\r\xff") == b"x\r\xff\xff"  # the server: only 0xFF
    w = Wire(role=CLIENT)
    w.codec.send_break()
    assert w.take_sent() == iac(BRK)


def test_client_and_server_settle_and_the_server_learns_the_window():
    s_out, c_out = bytearray(), bytearray()
    typed, seen, sizes = bytearray(), bytearray(), []
    server = TelnetCodec(
        send=s_out.extend, on_data=typed.extend, on_naws=lambda w, h: sizes.append((w, h))
    )
    client = TelnetCodec(send=c_out.extend, on_data=seen.extend, role=CLIENT)
    client.set_window(132, 43)
    converse(server, s_out, client, c_out)
    assert sizes == [(132, 43)] and server.window == (132, 43)
    assert server.us == {ECHO: True, SGA: True} and server.him == {NAWS: True}
    server.feed(client.encode(b"xl list\r\xff"))
    assert bytes(typed) == b"xl list\r\xff"
    client.feed(escape(b"root@dom0:~# \r\n\xff"))
    assert bytes(seen) == b"root@dom0:~# \r\n\xff"
