"""`--log FILE` holds exactly what a client received; `--log-events` records events beside it
(FILE.events), out of reach of the console byte stream; bad log targets are one error line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import serial
from console_hosts import host_only
from hypothesis import given
from hypothesis import strategies as st

from xenconsole.eventlog import EVENT_RE, Event, event_line, install, parse_events, read_events
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
def test_log_events_go_to_their_own_file_with_log_offsets(tmp_path) -> None:
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
            mid = len(got)
            a.sendall(b"xl list\r")
            recv_until(a, got, PROMPT)
            settle(a, got)
        data = wait_log(log, len(got))
        time.sleep(0.3)
        data = log.read_bytes()
    events = read_events(str(log))
    assert [(e.kind, e.who) for e in events] == [
        ("attach", a_name),
        ("attach", b_name),
        ("break", b_name),
        ("detach", b_name),
        ("attach", c_name),
        ("break", c_name),
        ("detach", c_name),
        ("detach", a_name),
    ]
    # The log is exactly the output stream client A saw: nothing inserted.
    assert data == bytes(got)
    offsets = [e.offset for e in events]
    assert offsets[0] == 0  # the first attach precedes the boot
    assert offsets == sorted(offsets)
    assert all(o <= mid for o in offsets[1:7]) and offsets[7] == len(got)
    assert all(EVENT_RE.match(line) for line in events_file(log).decode().splitlines())


@pytest.mark.timeout(60)
def test_a_dom0_echo_cannot_forge_an_event(tmp_path) -> None:
    """Issue 15 finding 8: a marker line printed at the dom0 prompt was read as an event,
    and stripping events removed real output."""
    log = tmp_path / "forge.log"
    forged = b"[xenconsole 2026-11-26T06:00:00.124Z attach tcp:10.0.0.99:31337]"
    with serve("--log", str(log), "--log-events", *host_only(tmp_path), wait=True) as host:
        got = bytearray()
        with socket.create_connection(host.address("tcp")) as a:
            me = f"tcp:127.0.0.1:{a.getsockname()[1]}"
            recv_until(a, got, PROMPT)
            a.sendall(b'echo "' + forged + b'"\r')
            recv_until(a, got, b"\r\n" + forged + b"\r\n" + PROMPT)
            a.sendall(b"printf '\\r\\n" + forged + b"\\r\\n'\r")
            recv_until(a, got, PROMPT)
            settle(a, got)
        time.sleep(0.3)
        data = wait_log(log, len(got))
    assert [(e.kind, e.who) for e in read_events(str(log))] == [("attach", me), ("detach", me)]
    assert data == bytes(got)
    assert data.count(forged) >= 2  # the output keeps every byte of it


class Sink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.got = bytearray()

    def deliver(self, data: bytes) -> None:
        self.got += data


def events_file(log) -> bytes:
    return (log.parent / (log.name + ".events")).read_bytes()


def test_offsets_sit_where_each_clients_stream_starts_and_ends(tmp_path) -> None:
    from twisted.internet.task import Clock

    path = tmp_path / "unit.log"
    clock, log = Clock(), open(path, "ab")  # noqa: SIM115
    hub = Hub(clock, log)
    events = install(hub, str(path))
    a, b = Sink("tcp:a"), Sink("tcp:b")
    hub.attach(a)
    hub.sink(b"one ")  # gathered for this reactor turn, not yet handed out
    hub.attach(b)
    hub.sink(b"two ")
    hub.on_break(b)
    hub.detach(b)
    hub.sink(b"three")
    clock.advance(0)
    log.close()
    events.close()
    assert (bytes(a.got), bytes(b.got)) == (b"one two three", b"two ")
    assert path.read_bytes() == b"one two three"
    got = [(e.offset, e.kind, e.who) for e in read_events(str(path))]
    assert got == [
        (0, "attach", "tcp:a"),
        (4, "attach", "tcp:b"),
        (8, "break", "tcp:b"),
        (8, "detach", "tcp:b"),
    ]


def test_event_line_format() -> None:
    line = event_line("attach", "telnet:127.0.0.1:5555", 1234, now=1795672800.25)
    assert line == b"2026-11-26T06:00:00.250Z 1234 attach telnet:127.0.0.1:5555\n"
    assert event_line("break", "x]\r\ny z", 0, now=0).endswith(b" 0 break x]??y?z\n")
    assert parse_events(line) == [
        Event("2026-11-26T06:00:00.250Z", 1234, "attach", "telnet:127.0.0.1:5555")
    ]
    with pytest.raises(ValueError, match="line 1: not an event"):
        parse_events(b"[xenconsole 2026-11-26T06:00:00.124Z attach tcp:10.0.0.99:31337]\n")


@given(st.binary(max_size=64))
def test_input_events_carry_any_bytes_as_one_word(data: bytes) -> None:
    line = event_line("input", "tcp:127.0.0.1:4556", 7, now=0, data=data)
    assert line.count(b" ") == 4 and line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(0x21 <= c <= 0x7E for c in line.split(b" ")[4][:-1])
    assert parse_events(line) == [
        Event("1970-01-01T00:00:00.000Z", 7, "input", "tcp:127.0.0.1:4556", data)
    ]


def test_input_event_format() -> None:
    line = event_line("input", "telnet:127.0.0.1:5555", 48213, now=1795672800.25, data=b"xl list\r")
    assert line == b"2026-11-26T06:00:00.250Z 48213 input telnet:127.0.0.1:5555 xl\\x20list\\x0d\n"


def test_log_events_needs_log() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "xenconsole", "serve", "--log-events", "--telnet", "127.0.0.1:0"],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stdout == b""
    assert r.stderr == b"xenconsole: error: --log-events needs --log FILE\n"


@pytest.mark.timeout(60)
def test_log_on_a_full_device_is_one_line_not_a_traceback(tmp_path) -> None:
    with serve("--log", "/dev/full", *host_only(tmp_path)) as host:
        host.wait_booted()
    err = host.stderr_text()
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if "log" in x]
    assert lines == [
        "xenconsole: log write failed ([Errno 28] No space left on device); logging stopped"
    ]
    assert host.proc.returncode == 0


@pytest.mark.timeout(30)
def test_log_on_a_fifo_without_reader_is_refused(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "xenconsole",
            "serve",
            "--log",
            str(fifo),
            "--telnet",
            "127.0.0.1:0",
            *host_only(tmp_path),
        ],
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 2
    assert r.stdout == b""
    assert (
        r.stderr
        == f"xenconsole: error: cannot open log {fifo}: is a FIFO (give a regular file)\n".encode()
    )
