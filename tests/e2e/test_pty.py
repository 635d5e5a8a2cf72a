"""The PTY backend end to end: a real `xenconsole serve --pty`, real clients on /dev/pts/N.

Clients come and go (docs/design.md): each new session must work, and output
produced while nobody had the PTY open is dropped, not replayed to the next client.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import sys
import time

import pytest
import serial

from xenconsole.testing import ServeError, serve

PROMPT = b"root@dom0:~# "
# No guests: nothing prints unless a test makes it, so "no stale output" and "idle" hold.
HOST_ONLY = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "512M"\n'


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pty") / "host.toml"
    path.write_text(HOST_ONLY)
    return str(path)


@pytest.fixture(scope="module")
def host(cfg):
    """One server for the session tests: clients come and go on the same PTY, as in use."""
    with serve("--config", cfg, pty=True) as h:
        yield h
        assert h.proc.poll() is None


def read_until(port: serial.Serial, needle: bytes, timeout: float = 10.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen; got {buf[-400:]!r}")
        buf += port.read(port.in_waiting or 1)
    return buf


def wait_for_prompt(port: serial.Serial, timeout: float = 20.0) -> None:
    """Press Enter until dom0's prompt answers (the host may still be booting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port.write(b"\r")
        try:
            read_until(port, PROMPT, 0.5)
            time.sleep(0.2)
            port.reset_input_buffer()
            return
        except AssertionError:
            continue
    raise AssertionError("no dom0 prompt on the PTY")


def xl_list(port: serial.Serial) -> bytes:
    port.write(b"xl list\r")
    out = read_until(port, PROMPT)
    assert b"Domain-0" in out
    return out


def wait_booted(host, timeout: float = 30.0) -> None:
    """Over TCP: once output goes quiet, press Enter until dom0's prompt answers."""
    with socket.create_connection(host.address("tcp"), timeout=0.5) as s:
        buf = b""
        deadline = time.monotonic() + timeout
        while PROMPT not in buf:
            assert time.monotonic() < deadline, buf[-300:]
            try:
                buf += s.recv(65536)
            except TimeoutError:
                s.sendall(b"\r")


def tcp_session(host, command: bytes) -> bytes:
    """Run one dom0 command over raw TCP and return what came back up to the prompt."""
    with socket.create_connection(host.address("tcp"), timeout=10) as s:
        s.sendall(command + b"\r")
        buf = b""
        deadline = time.monotonic() + 10
        while buf.count(PROMPT) < 1 or not buf.rstrip().endswith(PROMPT.rstrip()):
            assert time.monotonic() < deadline, buf[-300:]
            buf += s.recv(65536)
        return buf


@pytest.mark.timeout(60)
def test_pyserial_open_close_reopen_sessions(host):
    path = host.pty
    assert path is not None and path.startswith("/dev/pts/")
    for session in range(4):
        with serial.Serial(path, 115200, timeout=0.2) as port:
            wait_for_prompt(port)
            out = xl_list(port)
            assert b"xl list\r\n" in out, session
            assert b"Name                                        ID   Mem VCPUs" in out
            assert out.endswith(PROMPT)
        # the closed PTY costs nothing while detached, and other backends carry on
        if session == 1:
            assert b"Domain-0" in tcp_session(host, b"xl list")
    assert host.proc.poll() is None


@pytest.mark.timeout(60)
def test_output_while_detached_is_not_replayed(host):
    """`cat`-like clients (no flush on open) must not receive a stale backlog."""
    with serial.Serial(host.pty, 115200, timeout=0.2) as port:
        wait_for_prompt(port)
    time.sleep(0.3)  # closed: the server has seen the HUP
    # console output while nobody holds the PTY: it must be dropped, not queued
    stale = f"stale{os.getpid()}x{time.monotonic_ns()}".encode()
    assert stale + b"\r\n" in tcp_session(host, b"echo " + stale)
    fd = os.open(host.pty, os.O_RDWR | os.O_NOCTTY)  # no flush on open, unlike pyserial
    try:
        time.sleep(0.5)  # the server notices the client within its probe interval
        r, _, _ = select.select([fd], [], [], 0.5)
        assert r == [], os.read(fd, 65536)[:300]
        os.write(fd, b"echo fresh\r")
        buf = b""
        deadline = time.monotonic() + 10
        while not buf.endswith(b"fresh\r\n" + PROMPT):
            assert time.monotonic() < deadline, buf
            r, _, _ = select.select([fd], [], [], 1)
            if r:
                buf += os.read(fd, 65536)
        # exactly this session's output: the echo, the output, the prompt
        assert buf == b"echo fresh\r\nfresh\r\n" + PROMPT
        assert stale not in buf
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
def test_pty_is_raw_no_echo_loop(host):
    """Nothing written to the PTY comes back unless the dom0 shell echoes it."""
    with serial.Serial(host.pty, 115200, timeout=0.2) as port:
        wait_for_prompt(port)
        port.write(b"\x01\x01\x01")  # to Xen
        got = read_until(port, b"switch input)\r\n")
        assert got.endswith(
            b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"
        )
        port.write(b"\x01\x01\x01")
        read_until(port, b"*** Serial input to DOM0")
        time.sleep(0.3)
        port.reset_input_buffer()
        port.write(b"abc")
        assert read_until(port, b"abc", 3) == b"abc"
        time.sleep(0.5)
        assert port.read(4096) == b""  # no second copy of our own output


@pytest.mark.timeout(60)
def test_pty_link_symlink_is_created_and_removed(cfg, tmp_path):
    link = tmp_path / "xen-console"
    with serve("--config", cfg, "--pty", str(link), pty=False) as host:
        target = host.urls["pty"]
        assert os.path.islink(link)
        assert os.readlink(link) == target
        with serial.Serial(str(link), 115200, timeout=0.2) as port:
            wait_for_prompt(port)
            assert b"Domain-0" in xl_list(port)
    assert not os.path.lexists(link)


@pytest.mark.timeout(60)
def test_pty_server_idle_while_detached_does_not_spin(host):
    """No client on the PTY: the reactor must not busy-loop on the master's HUP."""
    wait_booted(host)  # the boot itself takes CPU; nobody is on the PTY
    time.sleep(0.5)
    t0 = _cpu_seconds(host.proc.pid)
    time.sleep(1.0)
    used = _cpu_seconds(host.proc.pid) - t0
    assert used < 0.25, f"server used {used:.2f}s of CPU in 1s while idle"
    # and once more after a client came and went
    with serial.Serial(host.pty, 115200, timeout=0.2) as port:
        wait_for_prompt(port)
    time.sleep(0.5)
    t0 = _cpu_seconds(host.proc.pid)
    time.sleep(1.0)
    used = _cpu_seconds(host.proc.pid) - t0
    assert used < 0.25, f"server used {used:.2f}s of CPU in 1s after a PTY client left"


@pytest.mark.timeout(60)
def test_pty_client_that_stalls_then_leaves(host):
    """A PTY client that stops reading fills every buffer; the next client must still work."""
    wait_booted(host)
    fd = os.open(host.pty, os.O_RDWR | os.O_NOCTTY)
    try:
        time.sleep(0.5)  # attached, and never reads
        out = tcp_session(host, b";".join([b"xl dmesg"] * 200))
        assert len(out) > 300_000  # more than the tty, Twisted's 64 KiB and the backlog
        time.sleep(0.5)  # the server has written what the tty takes, and is paused
    finally:
        os.close(fd)
    for _session in range(2):
        with serial.Serial(host.pty, 115200, timeout=0.2) as port:
            wait_for_prompt(port)
            assert b"Domain-0" in xl_list(port)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("picocom") is None, reason="picocom is not installed")
def test_picocom_sessions(host):
    pexpect = pytest.importorskip("pexpect")
    # as users type it, then with --noreset (no hangup on exit): both leave the PTY usable
    for extra in ([], ["--noreset"]):
        child = pexpect.spawn("picocom", ["-q", *extra, "-b", "115200", host.pty], timeout=15)
        try:
            deadline = time.monotonic() + 20
            while True:
                child.send("\r")
                i = child.expect([PROMPT.decode(), pexpect.TIMEOUT], timeout=0.5)
                if i == 0:
                    break
                assert time.monotonic() < deadline, "no prompt through picocom"
            child.send("xl list\r")
            child.expect("Domain-0 +0 +512 ")
            child.expect(PROMPT.decode())
            child.send("\x01\x18")  # C-a C-x: picocom's exit
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
    assert host.proc.poll() is None


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("PTY tests need Linux")


@pytest.mark.timeout(60)
def test_pty_link_replaces_a_stale_link_but_never_a_file(cfg, tmp_path):
    stale = tmp_path / "stale"
    stale.symlink_to("/dev/pts/does-not-exist")
    with serve("--config", cfg, "--pty", str(stale), pty=False, telnet=False, tcp=False) as h:
        assert os.readlink(stale) == h.urls["pty"]
    assert not os.path.lexists(stale)
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    with pytest.raises(ServeError) as e:
        with serve("--config", cfg, "--pty", str(precious), pty=False):
            pass
    assert f"cannot create PTY link {precious}: File exists" in str(e.value)
    assert precious.read_text() == "keep me\n"


@pytest.mark.timeout(60)
def test_pty_link_refuses_a_symlink_that_is_not_a_stale_pty_link(cfg, tmp_path):
    """Issue 15 finding 9: `--pty LINK` replaced any existing symlink."""
    target = tmp_path / "config.toml"
    target.write_text("precious = true\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ServeError) as e:
        with serve("--config", cfg, "--pty", str(link), pty=False):
            pass
    assert (
        f"xenconsole: error: cannot create PTY link {link}: File exists "
        f"(a link to {target}, not a stale PTY link)"
    ) in str(e.value)
    assert os.readlink(link) == str(target) and target.read_text() == "precious = true\n"
    master, slave = os.openpty()  # a live PTY: another server's, or a terminal's
    try:
        live = tmp_path / "live"
        live.symlink_to(os.ttyname(slave))
        with pytest.raises(ServeError):
            with serve("--config", cfg, "--pty", str(live), pty=False):
                pass
        assert os.readlink(live) == os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("addr", ["127.1", "[::ffff:127.0.0.1]", "LOCALHOST"])
def test_no_loopback_warning_for_loopback_spellings(cfg, addr):
    with serve("--config", cfg, "--tcp", f"{addr}:0", telnet=False, tcp=False) as host:
        pass
    assert "not loopback" not in host.stderr_text()
