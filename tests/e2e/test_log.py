"""`--log FILE` holds exactly what a client received; `--log-events` adds marked event lines."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time

import pytest
import serial
from console_hosts import host_only

from xenconsole.eventlog import EVENT_RE, event_line, install, strip_events
from xenconsole.hub import Hub
from xenconsole.testing import serve

PROMPT = b"root@dom0:~# "


def recv_until(sock: socket.socket, buf: bytearray, marker: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    start = len(buf)
    while marker not in buf[start:]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} not seen; last bytes {bytes(buf[-300:])!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("server closed the connection")
        buf += chunk


def settle(sock: socket.socket, buf: bytearray, quiet: float = 0.3) -> None:
    sock.settimeout(quiet)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            return
        buf += chunk


def wait_log(path, length: int, timeout: float = 5) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes()
        if len(data) >= length or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_log_is_byte_for_byte_what_the_client_received(tmp_path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"")
    # Power on at the first client, so that client sees the whole line from its first byte.
    with serve("--log", str(log), *host_only(tmp_path), wait=True, telnet=False) as host:
        got = bytearray()
        with socket.create_connection(host.address("tcp")) as s:
            recv_until(s, got, PROMPT)
            for keys, marker in (
                (b"xl list\r", PROMPT),
                (b"\x01\x01\x01", b"three times to switch input)\r\n"),
                (b"h", b"=> show this message\r\n"),
                (b"w", b"(XEN) "),
                (b"\x01\x01\x01", b"three times to switch input)\r\n"),
                (b"echo \xff\x1b[1mX\r", PROMPT),
                (b"nosuchcmd\r", PROMPT),
            ):
                s.sendall(keys)
                recv_until(s, got, marker)
            settle(s, got)
        data = wait_log(log, len(got))
    assert len(got) > 2000
    assert b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)" in got
    assert got.count(PROMPT) >= 4
    assert data == bytes(got)


@pytest.mark.timeout(60)
def test_log_events_marks_attach_detach_and_break(tmp_path) -> None:
    log = tmp_path / "events.log"
    args = ("--log", str(log), "--log-events", *host_only(tmp_path))
    with serve(*args, wait=True, rfc2217=True) as host:
        got = bytearray()
        with socket.create_connection(host.address("tcp")) as a:
            a_name = f"tcp:127.0.0.1:{a.getsockname()[1]}"
            recv_until(a, got, PROMPT)
            # A telnet client sends IAC BRK, then leaves.
            with socket.create_connection(host.address("telnet")) as b:
                b_name = f"telnet:127.0.0.1:{b.getsockname()[1]}"
                b.sendall(b"\xff\xf3")
                time.sleep(0.3)
            # An RFC 2217 client sends a break through the COM-PORT option.
            c = serial.serial_for_url(host.urls["rfc2217"], timeout=0.2)
            c_name = f"rfc2217:127.0.0.1:{c._socket.getsockname()[1]}"
            c.send_break(0.05)
            c.close()
            time.sleep(0.3)
            a.sendall(b"xl list\r")
            recv_until(a, got, PROMPT)
            settle(a, got)
        data = wait_log(log, len(got) + 7 * 60)
        time.sleep(0.3)
        data = log.read_bytes()
    events = [(m.group(2).decode(), m.group(3).decode()) for m in EVENT_RE.finditer(data)]
    assert events == [
        ("attach", a_name),
        ("attach", b_name),
        ("break", b_name),
        ("detach", b_name),
        ("attach", c_name),
        ("break", c_name),
        ("detach", c_name),
        ("detach", a_name),
    ]
    assert EVENT_RE.match(data)  # the first attach precedes the boot
    # Without the markers the log is exactly the output stream client A saw.
    assert strip_events(data) == bytes(got)


class Sink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.got = bytearray()

    def deliver(self, data: bytes) -> None:
        self.got += data


def test_markers_sit_where_each_clients_stream_starts_and_ends() -> None:
    from twisted.internet.task import Clock

    clock, log = Clock(), io.BytesIO()
    hub = Hub(clock, log)
    install(hub)
    a, b = Sink("tcp:a"), Sink("tcp:b")
    hub.attach(a)
    hub.sink(b"one ")  # gathered for this reactor turn, not yet handed out
    hub.attach(b)
    hub.sink(b"two ")
    hub.on_break(b)
    hub.detach(b)
    hub.sink(b"three")
    clock.advance(0)
    assert (bytes(a.got), bytes(b.got)) == (b"one two three", b"two ")
    kinds = [(m.group(2), m.group(3)) for m in EVENT_RE.finditer(log.getvalue())]
    assert kinds == [
        (b"attach", b"tcp:a"),
        (b"attach", b"tcp:b"),
        (b"break", b"tcp:b"),
        (b"detach", b"tcp:b"),
    ]
    pieces = EVENT_RE.split(log.getvalue())[::4]
    assert pieces == [b"", b"one ", b"two ", b"", b"three"]


def test_event_line_format() -> None:
    line = event_line("attach", "telnet:127.0.0.1:5555", now=1795672800.25)
    assert line == b"\r\n[xenconsole 2026-11-26T06:00:00.250Z attach telnet:127.0.0.1:5555]\r\n"
    assert strip_events(b"abc" + line + b"def") == b"abcdef"
    assert event_line("break", "x]\r\ny", now=0).endswith(b" break x???y]\r\n")


def test_log_events_needs_log() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "xenconsole", "serve", "--log-events", "--telnet", "127.0.0.1:0"],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stdout == b""
    assert r.stderr == b"xenconsole: error: --log-events needs --log FILE\n"
