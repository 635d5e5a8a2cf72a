"""`xenconsole connect` driven through a PTY against served hosts and scripted servers (its
screen model, session and links are tested in-process in tests/xenconsole/)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pexpect
import pytest
from console_hosts import host_only

from xenconsole.testing import serve
from xenconsole.vt import Screen

TO_DOM0 = b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"


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
