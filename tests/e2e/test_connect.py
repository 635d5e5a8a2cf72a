"""`xenconsole connect`: the screen model, the telnet link, and the client driven through a PTY."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pexpect
import pytest
from console_hosts import host_only
from hypothesis import given, settings
from hypothesis import strategies as st

from xenconsole.clientlink import LinkUsageError
from xenconsole.connect import ClientSession
from xenconsole.testing import serve
from xenconsole.transports import open_link
from xenconsole.transports.telnet import TelnetLink
from xenconsole.vt import Screen

TO_XEN = b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"
TO_DOM0 = b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"

# ---- the screen model ---------------------------------------------------------------------


def test_screen_text_wrap_scroll_and_controls() -> None:
    s = Screen(10, 3)
    s.feed_bytes(b"hello world\r\nab\bc")
    assert s.display() == ["hello worl", "d", "ac"]
    s.feed_bytes(b"\r\nline3\r\nline4")
    assert s.display() == ["ac", "line3", "line4"]
    assert (s.x, s.y) == (5, 2)


def test_screen_escape_sequences_even_when_split() -> None:
    s = Screen(20, 3)
    s.feed_bytes(b"abcdef\x1b[1;31mX\x1b[0m\x1b[")
    s.feed_bytes(b"3D!\x1b]0;title\x07")
    assert s.display()[0] == "abcd!fX"
    s.feed_bytes(b"\x1b[2;5Hmid\x1b[1;3H\x1b[K\x1b[?25l")
    assert s.display() == ["ab", "    mid", ""]
    s.feed_bytes(b"\x1b[2J")
    assert s.display() == ["", "", ""]


def test_screen_utf8_split_and_resize_keeps_the_cursor_line() -> None:
    s = Screen(10, 4)
    s.feed_bytes("é".encode()[:1])
    s.feed_bytes("é".encode()[1:] + b"\r\n1\r\n2\r\n3")
    assert s.display() == ["é", "1", "2", "3"]
    s.resize(5, 2)
    assert s.display() == ["2", "3"] and (s.x, s.y) == (1, 1)
    s.resize(12, 3)
    assert s.display() == ["2", "3", ""] and s.cols == 12


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"\x1b[", b"\x1b[?1049h", b"\x1b[999;999H", b"\x1b]0;", b"\r\n"]),
            st.tuples(st.integers(1, 120), st.integers(1, 50)),
        ),
        max_size=30,
    )
)
def test_screen_survives_any_bytes_and_resizes(items) -> None:
    s = Screen(80, 24)
    for item in items:
        if isinstance(item, tuple):
            s.resize(*item)
        else:
            s.feed_bytes(item)
        assert len(s.lines) == s.rows and all(len(row) == s.cols for row in s.lines)
        assert 0 <= s.x < s.cols and 0 <= s.y < s.rows


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


# ---- the client in a terminal ------------------------------------------------------------


class Term:
    """The client under pexpect, its output fed to a screen model to read what it drew."""

    def __init__(self, url: str, cols: int = 80, rows: int = 24) -> None:
        self.p = pexpect.spawn(
            sys.executable,
            ["-m", "xenconsole", "connect", url],
            dimensions=(rows, cols),
            env={"TERM": "xterm", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            timeout=20,
        )
        self.screen = Screen(cols, rows)

    def pump(self, pred, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError("screen never matched:\n" + self.screen.text())
            try:
                self.screen.feed_bytes(self.p.read_nonblocking(65536, timeout=0.1))
            except pexpect.TIMEOUT:
                pass

    def status(self) -> str:
        return self.screen.display()[-1]

    def wait_status(self, text: str) -> None:
        self.pump(lambda: self.status().startswith(text))

    def wait_text(self, text: str) -> None:
        self.pump(lambda: text in self.screen.text())

    def finish(self) -> tuple[int | None, bytes]:
        self.p.expect(pexpect.EOF)
        tail = self.p.before
        self.p.close()
        return self.p.exitstatus, tail


@pytest.mark.timeout(60)
def test_connect_telnet_status_bar_menu_and_quit(tmp_path) -> None:
    with serve(*host_only(tmp_path), wait=True) as host:
        url = host.urls["telnet"]
        t = Term(url)
        try:
            t.wait_status(" input: DOM0  | Ctrl-A x3 switches | Ctrl-] menu | " + url)
            t.wait_text("root@dom0:~#")
            t.p.send("\x01\x01\x01")
            start = time.monotonic()
            t.wait_status(" input: Xen  |")
            switch_s = time.monotonic() - start
            t.p.send("h")
            t.wait_text("(XEN)  key 'h' (ascii '68') => show this message")
            t.p.send("\x1d")
            t.wait_text("xenconsole menu")
            t.p.send("s")  # switch input from the menu
            t.wait_status(" input: DOM0  |")
            assert "xenconsole menu" not in t.screen.text()
            t.p.send("xl list\r")
            t.wait_text("Domain-0                                     0   512")
            t.p.setwinsize(30, 100)  # the layout follows; NAWS goes to the host
            t.screen.resize(100, 30)
            t.wait_status(" input: DOM0  | Ctrl-A x3 switches")
            t.p.send("\x1d")
            t.wait_text("xenconsole menu")
            t.p.send("q")
            status, tail = t.finish()
        finally:
            t.p.close(force=True)
    assert status == 0
    assert tail.endswith(f"xenconsole: disconnected from {url}\r\n".encode())
    assert switch_s < 5


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["tcp", "rfc2217", "pty"])
def test_connect_other_transports_and_list_keys_from_unknown_target(kind: str, tmp_path) -> None:
    cfg = host_only(tmp_path)
    with serve(*cfg, rfc2217=kind == "rfc2217", pty=kind == "pty", telnet=False) as host:
        t = Term(host.urls[kind])
        try:
            t.wait_status(" input: ?  |")  # attached after boot: no switch message seen yet
            t.p.send("\r")
            t.wait_text("root@dom0:~#")
            t.p.send("\x1d")
            t.wait_text("xenconsole menu")
            t.p.send("k")  # unknown target: switch once, press h, switch back
            t.wait_text("(XEN)  key 'w' (ascii '77') => synchronously dump console ring")
            t.wait_status(" input: DOM0  |")
            t.p.send("\x1d")
            t.wait_text("xenconsole menu")
            t.p.send("b")
            expect = "BREAK sent" if kind == "rfc2217" else "a BREAK cannot travel over"
            t.pump(lambda: expect in t.status())
            t.p.send("\x1d")
            t.wait_text("xenconsole menu")
            t.p.send("q")
            status, _tail = t.finish()
        finally:
            t.p.close(force=True)
    assert status == 0


@pytest.mark.timeout(60)
def test_connect_reports_a_host_that_goes_away(tmp_path) -> None:
    with serve(*host_only(tmp_path)) as host:
        t = Term(host.urls["tcp"])
        try:
            t.p.send("\r")
            t.wait_text("root@dom0:~#")
            host.proc.terminate()
            status, tail = t.finish()
        finally:
            t.p.close(force=True)
    assert status == 1
    assert tail.endswith(
        f"xenconsole: connection to {host.urls['tcp']} closed by the host\r\n".encode()
    )


@pytest.mark.timeout(60)
def test_ctrl_c_goes_to_the_host_and_sigint_quits(tmp_path) -> None:
    with serve(*host_only(tmp_path)) as host:
        t = Term(host.urls["tcp"])
        try:
            t.wait_status(" input: ?  |")
            t.p.send("\r")
            t.wait_text("root@dom0:~#")
            t.p.send("echo abandoned\x03")  # dom0's shell abandons the line
            t.wait_text("root@dom0:~# echo abandoned^C\nroot@dom0:~#")
            assert t.p.isalive()
            t.p.kill(signal.SIGINT)
            status, tail = t.finish()
        finally:
            t.p.close(force=True)
    assert status == 0
    assert tail.endswith(f"xenconsole: disconnected from {host.urls['tcp']}\r\n".encode())


@pytest.mark.timeout(60)
def test_connect_passes_the_window_size_on_by_naws() -> None:
    """A scripted telnet server asks for NAWS and records what the real client sends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    t = Term(f"telnet://127.0.0.1:{srv.getsockname()[1]}", cols=80, rows=24)
    try:
        peer, _ = srv.accept()
        peer.settimeout(10)
        peer.sendall(b"\xff\xfd\x1f" + TO_DOM0)  # DO NAWS, then the dom0 switch message
        t.wait_status(" input: DOM0  |")
        got = bytearray()

        def naws_seen(size: bytes) -> bool:
            t.pump(lambda: True, timeout=0)
            try:
                got.extend(peer.recv(4096))
            except TimeoutError:
                pass
            return b"\xff\xfa\x1f" + size + b"\xff\xf0" in got

        deadline = time.monotonic() + 10
        while not naws_seen(b"\x00\x50\x00\x17"):  # 80 x 23: the rows above the status bar
            assert time.monotonic() < deadline, bytes(got)
        assert got.startswith(b"\xff\xfb\x1f")  # WILL NAWS first
        t.p.setwinsize(31, 120)
        while not naws_seen(b"\x00\x78\x00\x1e"):  # 120 x 30
            assert time.monotonic() < deadline, bytes(got)
        peer.close()
        status, tail = t.finish()
    finally:
        t.p.close(force=True)
        srv.close()
    assert status == 1 and b"closed by the host" in tail


def run_connect(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xenconsole", "connect", url],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def test_connect_errors_are_one_line() -> None:
    r = run_connect("telnet://127.0.0.1:1")
    assert (r.returncode, r.stderr) == (2, b"xenconsole: error: connect needs a terminal\n")
    p = pexpect.spawn(sys.executable, ["-m", "xenconsole", "connect", "gopher://x:1"], timeout=20)
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 2
    assert p.before == (
        b"xenconsole: error: gopher://x:1: unknown scheme"
        b" (use telnet://, socket://, rfc2217:// or a path)\r\n"
    )
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nobody listens there now
    p = pexpect.spawn(
        sys.executable, ["-m", "xenconsole", "connect", f"socket://127.0.0.1:{port}"], timeout=20
    )
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 1
    url = f"socket://127.0.0.1:{port}"
    want = f"xenconsole: error: cannot connect to {url}: Connection refused\r\n"
    assert p.before == want.encode()
