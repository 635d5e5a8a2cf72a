"""Issue 13's defects against a real `xenconsole serve` on 127.0.0.1: CR LF across clients,
SIGHUP, and the default host idling after its guests' work."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import socket
import struct
import termios
import time
import tty

import pytest

from xenconsole.testing import serve

PROMPT = b"root@dom0:~# "
pytestmark = pytest.mark.e2e
# Linux's values (asm-generic/ioctls.h, asm-generic/termbits.h); Python's termios lacks them.
TIOCSBRK, TIOCCBRK = 0x5427, 0x5428
EXTPROC = getattr(termios, "EXTPROC", 0o200000)
TIOCPKT_IOCTL = 0x40


def recv_until(sock: socket.socket, pattern: bytes, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while not re.search(pattern, buf):
        d = sock.recv(65536)
        if not d:
            raise AssertionError(f"closed; got {buf[-500:]!r}")
        buf += d
    return buf


def quiet_default_host(host) -> None:
    """Wait until both default guests have printed their one line (then they idle)."""
    s = socket.create_connection(host.address("tcp"))
    recv_until(
        s,
        rb"\(d1\) touch done 32768\r\n[\s\S]*\(d2\) touch done 4096\r\n|"
        rb"\(d2\) touch done 4096\r\n[\s\S]*\(d1\) touch done 32768\r\n",
        90,
    )
    s.sendall(b"\r")
    recv_until(s, PROMPT + b"$")
    s.close()


@pytest.mark.timeout(150)
def test_cr_from_one_client_lf_from_the_next_byte_for_byte():
    with serve(tcp=True, telnet=True, wait=True) as host:
        quiet_default_host(host)
        a = socket.create_connection(host.address("tcp"))
        a.sendall(b"\r")  # a person's Enter, then they leave
        assert recv_until(a, PROMPT + b"$") == b"\r\n" + PROMPT
        a.close()
        # labgrid's SerialDriver next: sendline("") sends a lone LF.
        b = socket.create_connection(host.address("tcp"))
        b.sendall(b"\n")
        assert recv_until(b, PROMPT + b"$", 10) == b"\r\n" + PROMPT
        # The pair in one write is still one Enter.
        b.sendall(b"echo x\r\n")
        assert recv_until(b, PROMPT + b"$", 10) == b"echo x\r\nx\r\n" + PROMPT
        b.close()


@pytest.mark.timeout(150)
def test_default_guests_do_their_work_then_idle():
    with serve(tcp=True, wait=True) as host:
        quiet_default_host(host)
        s = socket.create_connection(host.address("tcp"))
        s.sendall(b"xl vcpu-list\r")
        out = recv_until(s, PROMPT + b"$").decode()
        # Every guest vCPU is blocked in `hlt` (state -b-), none running (r--).
        rows = re.findall(r"^(guest\d)\s+(\d+)\s+(\d+)\s+\d+\s+(\S+)\s", out, re.M)
        assert sorted((n, d, v) for n, d, v, _ in rows) == [
            ("guest1", "1", "0"),
            ("guest2", "2", "0"),
            ("guest2", "2", "1"),
        ]
        assert {st for *_, st in rows} == {"-b-"}, out
        # And their CPU time no longer grows.
        s.sendall(b"xl list\r")
        t0 = recv_until(s, PROMPT + b"$").decode()
        time.sleep(1.0)
        s.sendall(b"xl list\r")
        t1 = recv_until(s, PROMPT + b"$").decode()
        times = [
            re.findall(r"^guest\d\s+\d+\s+\d+\s+\d+\s+\S+\s+([\d.]+)", t, re.M) for t in (t0, t1)
        ]
        assert times[0] == times[1] and len(times[0]) == 2, (t0, t1)
        s.close()


def wait_for(pred, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.timeout(150)
def test_sighup_reopens_the_log_after_logrotates_rename(tmp_path):
    log = tmp_path / "console.log"
    with serve("--log", str(log), tcp=True, wait=True) as host:
        quiet_default_host(host)
        s = socket.create_connection(host.address("tcp"))
        s.sendall(b"echo before-rotate\r")
        recv_until(s, rb"before-rotate\r\n" + PROMPT + b"$")
        assert wait_for(lambda: b"before-rotate\r\n" + PROMPT in log.read_bytes())
        # logrotate without copytruncate: rename, then `postrotate kill -HUP`.
        log.rename(tmp_path / "console.log.1")
        host.proc.send_signal(signal.SIGHUP)
        assert wait_for(log.exists), "no new log after SIGHUP"
        s.sendall(b"echo after-rotate\r")
        recv_until(s, rb"after-rotate\r\n" + PROMPT + b"$")
        assert wait_for(
            lambda: log.read_bytes() == b"echo after-rotate\r\nafter-rotate\r\n" + PROMPT
        )
        old = (tmp_path / "console.log.1").read_bytes()
        assert old.endswith(b"echo before-rotate\r\nbefore-rotate\r\n" + PROMPT)
        assert b"after-rotate" not in old
        # A second SIGHUP without a rename keeps appending to the same file.
        host.proc.send_signal(signal.SIGHUP)
        s.sendall(b"echo again\r")
        recv_until(s, rb"again\r\n" + PROMPT + b"$")
        assert wait_for(lambda: log.read_bytes().endswith(b"again\r\n" + PROMPT))
        assert log.read_bytes().startswith(b"echo after-rotate\r\n")
        assert host.proc.poll() is None
        s.close()


@pytest.mark.timeout(60)
def test_sighup_without_a_log_does_not_stop_the_server():
    with serve(tcp=True) as host:
        host.wait_booted()
        for _ in range(3):
            host.proc.send_signal(signal.SIGHUP)
        s = socket.create_connection(host.address("tcp"))
        s.sendall(b"echo alive\r")
        assert recv_until(s, rb"alive\r\n" + PROMPT + b"$").endswith(b"alive\r\n" + PROMPT)
        assert host.proc.poll() is None
        assert "Traceback" not in host.stderr_text()
        s.close()


@pytest.mark.timeout(30)
def test_a_break_on_a_pty_never_reaches_the_master():
    """Why the PTY transport cannot log a BREAK: Linux's pty driver has no break_ctl, so
    the tty layer's send_break() returns 0 without doing anything (drivers/tty/pty.c has no
    .break_ctl in pty_unix98_ops; drivers/tty/tty_io.c send_break(): `if
    (tty->ops->break_ctl == NULL) return 0;`). Checked here on the running kernel, with the
    master in packet mode, where any other line event (flush, stop/start, termios change
    with EXTPROC) would be reported."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
        attrs = termios.tcgetattr(slave)
        attrs[3] |= EXTPROC
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        poll = select.poll()
        poll.register(master, select.POLLIN | select.POLLPRI)
        while poll.poll(100):  # the termios change itself: TIOCPKT_IOCTL, read it away
            assert os.read(master, 64)[0] & TIOCPKT_IOCTL
        termios.tcsendbreak(slave, 0)
        fcntl.ioctl(slave, TIOCSBRK)
        fcntl.ioctl(slave, TIOCCBRK)
        assert poll.poll(500) == []  # nothing at all on the master
        os.write(slave, b"x")  # while data still arrives, as packet data (status byte 0)
        assert poll.poll(2000) != []
        assert os.read(master, 64) == b"\x00x"
    finally:
        os.close(slave)
        os.close(master)


@pytest.mark.skipif(shutil.which("telnet") is None, reason="the telnet program is not installed")
@pytest.mark.timeout(120)
def test_the_breaks_a_pty_cannot_carry_arrive_by_telnet_and_rfc2217(tmp_path):
    """What docs/contract.md offers instead of a PTY BREAK: a real telnet client's `send brk`
    (IAC BRK) and pyserial's RFC 2217 send_break() are each one `break` event, and the line
    goes on (Xen's UART driver ignores a received break: nothing printed, input unchanged)."""
    import pexpect
    import serial

    cfg = tmp_path / "host.toml"
    cfg.write_text('[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n')
    log = tmp_path / "console.log"
    args = ("--config", str(cfg), "--log", str(log), "--log-events")
    with serve(*args, tcp=True, rfc2217=True, pty=True, wait=True) as host:
        host.wait_booted()
        h, port = host.address("telnet")
        child = pexpect.spawn(f"telnet {h} {port}", timeout=20, encoding="utf-8")
        try:
            child.expect_exact("Escape character is '^]'.\r\n")
            child.send("\x1d")
            child.expect_exact("telnet>")
            child.sendline("send brk")
            child.sendline("")  # back to the session: Enter gives dom0's prompt
            child.expect_exact(PROMPT.decode())
        finally:
            child.close(force=True)
        port2217 = serial.serial_for_url(host.urls["rfc2217"], timeout=0.2)
        me = f"rfc2217:127.0.0.1:{port2217._socket.getsockname()[1]}"
        port2217.send_break(0.05)
        port2217.close()
        # A BREAK on the PTY (picocom's, screen's): nothing reaches the master (see above).
        pty = os.open(host.pty, os.O_RDWR | os.O_NOCTTY)
        termios.tcsendbreak(pty, 0)
        os.close(pty)
        s = socket.create_connection(host.address("tcp"))
        s.sendall(b"echo after-breaks\r")
        recv_until(s, rb"after-breaks\r\n" + PROMPT + b"$")
        s.close()
        from xenconsole.eventlog import read_events

        assert wait_for(lambda: len(read_events(str(log))) >= 9)
        breaks = [(e.kind, e.who.split(":")[0]) for e in read_events(str(log)) if e.kind == "break"]
        assert breaks == [("break", "telnet"), ("break", "rfc2217")]
        assert me in [e.who for e in read_events(str(log)) if e.kind == "break"]
        assert host.proc.poll() is None
