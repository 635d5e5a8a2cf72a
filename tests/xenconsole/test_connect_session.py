"""`xenconsole connect`'s session and link, in-process: the input target follows the
switch messages (xenconsole/connect.py), the telnet link against a scripted server on
127.0.0.1 (xenconsole/transports/telnet.py), bad URLs. The client as a program is
tests/e2e/test_connect.py (through a PTY) and tests/xenconsole/test_connect_app.py
(prompt_toolkit's pipe input)."""

from __future__ import annotations

import socket
import time

import pytest

from xenconsole.clientlink import LinkUsageError
from xenconsole.connect import ClientSession
from xenconsole.transports import open_link
from xenconsole.transports.telnet import TelnetLink

TO_XEN = b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"
TO_DOM0 = b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"

# ---- input target tracking ----------------------------------------------------------------


class NullLink:
    url = "socket://test"

    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data

    def set_size(self, cols: int, rows: int) -> None:
        pass


def test_target_follows_switch_messages_across_chunks() -> None:
    link = NullLink()
    sess = ClientSession(link)
    assert sess.target == "?"
    msg = TO_XEN
    sess.received(b"root@dom0:~# " + msg[:20])
    assert sess.target == "?"
    sess.received(msg[20:])
    assert (sess.target, sess.switches) == ("Xen", 1)
    sess.received(b"(XEN) 'h' pressed -> showing installed handlers\r\n")
    assert (sess.target, sess.switches) == ("Xen", 1)  # the old message is not counted twice
    sess.received(TO_DOM0 + TO_XEN + TO_DOM0)
    assert (sess.target, sess.switches) == ("DOM0", 4)
    sess.list_keys()
    assert bytes(link.sent) == b"\x01\x01\x01h\x01\x01\x01"
    sess.switch_input()
    assert bytes(link.sent).endswith(b"h\x01\x01\x01\x01\x01\x01")


# ---- the telnet link against a scripted server -------------------------------------------


@pytest.fixture
def telnet_pair():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    link = TelnetLink(f"telnet://127.0.0.1:{srv.getsockname()[1]}")
    peer, _ = srv.accept()
    peer.settimeout(5)
    got: list[bytes | None] = []
    link.start(got.append)
    yield link, peer, got
    link.close()
    peer.close()
    srv.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        buf += sock.recv(n - len(buf))
    return buf


def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_telnet_link_negotiates_naws_and_character_mode(telnet_pair) -> None:
    link, peer, got = telnet_pair
    link.set_size(100, 30)
    # Our server's opening: WILL ECHO, WILL SGA, DO NAWS; plus an option nobody supports.
    peer.sendall(b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x1f\xff\xfd\x18")
    expect = b"\xff\xfd\x01\xff\xfd\x03\xff\xfb\x1f\xff\xfa\x1f\x00\x64\x00\x1e\xff\xf0\xff\xfc\x18"
    assert recv_exact(peer, len(expect)) == expect
    link.set_size(255, 40)  # 255 must be doubled inside the subnegotiation
    assert recv_exact(peer, 10) == b"\xff\xfa\x1f\x00\xff\xff\x00\x28\xff\xf0"
    # Repeating an option is not answered again (no loops).
    peer.sendall(b"\xff\xfb\x01data\xff\xffmore\xff\xfa\x18\x01\xff\xf0!")
    wait_for(lambda: b"".join(g for g in got if g) == b"data\xffmore!")
    link.write(b"ls\r\xff")
    link.send_break()
    assert recv_exact(peer, 8) == b"ls\r\x00\xff\xff\xff\xf3"


def test_telnet_link_reports_the_end(telnet_pair) -> None:
    _link, peer, got = telnet_pair
    peer.close()
    wait_for(lambda: got and got[-1] is None)


def test_bad_urls() -> None:
    with pytest.raises(LinkUsageError, match="unknown scheme"):
        open_link("ssh://host:22")
    with pytest.raises(LinkUsageError, match=r"expected telnet://HOST:PORT"):
        open_link("telnet://127.0.0.1")
