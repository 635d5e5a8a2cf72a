"""Issue 13 parts 5 and 6 against a real `xenconsole serve` on 127.0.0.1: replay on attach,
per-line log timestamps, the input log, read-only listeners and the exclusive writer."""

from __future__ import annotations

import re
import socket
import time

import pytest

from xenconsole.eventlog import parse_events
from xenconsole.labopts import TimestampedLog
from xenconsole.testing import serve

PROMPT = b"root@dom0:~# "
pytestmark = pytest.mark.e2e
HOST_ONLY = '[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n'
STAMP = rb"\[(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
STAMP += rb"[ \d]\d \d\d:\d\d:\d\d \d{4}\] "


def host_only(tmp_path) -> tuple[str, str]:
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST_ONLY)
    return ("--config", str(cfg))


def recv_until(sock: socket.socket, buf: bytearray, pattern: bytes, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not re.search(pattern, bytes(buf)):
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not seen; last bytes {bytes(buf[-300:])!r}")
        sock.settimeout(left)
        d = sock.recv(65536)
        if not d:
            raise AssertionError(f"closed; got {bytes(buf[-300:])!r}")
        buf += d


def quiet(sock: socket.socket, buf: bytearray, for_s: float = 0.5) -> None:
    """Read whatever else comes within `for_s` seconds of silence."""
    sock.settimeout(for_s)
    try:
        while d := sock.recv(65536):
            buf += d
    except TimeoutError:
        pass


def booted(host) -> tuple[socket.socket, bytearray]:
    s = socket.create_connection(host.address("tcp"))
    buf = bytearray()
    recv_until(s, buf, re.escape(PROMPT) + b"$", 60)
    return s, buf


def run(s: socket.socket, buf: bytearray, line: str) -> None:
    s.sendall(line.encode() + b"\r")
    recv_until(s, buf, re.escape(line.encode()) + rb"\r\n[\s\S]*" + re.escape(PROMPT) + b"$")


@pytest.mark.timeout(120)
def test_replay_gives_a_new_client_the_last_output_from_a_line_start(tmp_path):
    with serve(*host_only(tmp_path), "--replay-bytes", "300", tcp=True, wait=True) as host:
        a, seen = booted(host)
        run(a, seen, "echo replay-marker")
        a.close()
        b = socket.create_connection(host.address("tcp"))
        got = bytearray()
        recv_until(b, got, rb"replay-marker\r\n" + re.escape(PROMPT) + b"$")
        quiet(b, got)
        # Exactly the tail of what the first client saw, at most 300 bytes, from a line start.
        assert bytes(seen).endswith(bytes(got)) and 0 < len(got) <= 300
        assert seen[len(seen) - len(got) - 1 : len(seen) - len(got)] == b"\n"
        assert got.endswith(b"echo replay-marker\r\nreplay-marker\r\n" + PROMPT)
        # Then live output as usual.
        run(b, got, "echo live")
        b.close()


@pytest.mark.timeout(120)
def test_replay_default_is_64k_and_zero_turns_it_off(tmp_path):
    with serve(*host_only(tmp_path), tcp=True, wait=True, replay=True) as host:
        a, seen = booted(host)
        a.close()
        b = socket.create_connection(host.address("tcp"))
        got = bytearray()
        recv_until(b, got, re.escape(PROMPT) + b"$")
        quiet(b, got)
        assert len(seen) < 64 * 1024 and bytes(got) == bytes(seen)  # all of it: under 64 KiB
        b.close()
    with serve(*host_only(tmp_path), "--replay-bytes", "0", tcp=True, wait=True) as host:
        a, seen = booted(host)
        a.close()
        b = socket.create_connection(host.address("tcp"))
        got = bytearray()
        quiet(b, got, 1.0)
        assert got == b""
        b.close()


@pytest.mark.timeout(120)
def test_log_timestamps_stamp_every_line_and_nothing_else(tmp_path):
    log = tmp_path / "console.log"
    args = ("--log", str(log), "--log-timestamps", *host_only(tmp_path))
    with serve(*args, tcp=True, wait=True) as host:
        a, seen = booted(host)
        run(a, seen, "echo stamped")
        a.close()
        end = time.monotonic() + 10
        while time.monotonic() < end and not log.read_bytes().endswith(b"stamped\r\n" + PROMPT):
            time.sleep(0.05)
    data = log.read_bytes()
    lines = data.split(b"\n")
    assert len(lines) > 10
    for line in lines:
        assert re.match(STAMP, line), line
    # Without the stamps the log is exactly the client's output.
    assert re.sub(b"(?m)^" + STAMP, b"", data) == bytes(seen)


def test_timestamped_log_stamps_when_the_line_starts():
    import io

    f, t = io.BytesIO(), [0.0]
    log = TimestampedLog(f, clock=lambda: t[0])
    log.write(b"ab")
    t[0] = 86400.0 * 365
    log.write(b"c\r\nd")
    log.write(b"\n")
    log.write(b"\n")
    stamps = re.findall(STAMP, f.getvalue())
    assert len(stamps) == 3
    assert re.sub(STAMP, b"", f.getvalue()) == b"abc\r\nd\n\n"


@pytest.mark.timeout(120)
def test_log_input_records_what_each_client_typed(tmp_path):
    log = tmp_path / "console.log"
    with serve("--log", str(log), "--log-input", *host_only(tmp_path), tcp=True, wait=True) as h:
        a, seen = booted(h)
        me = f"tcp:127.0.0.1:{a.getsockname()[1]}"
        run(a, seen, "echo typed in")
        a.close()
        end = time.monotonic() + 10
        events = tmp_path / "console.log.events"
        while time.monotonic() < end and b"typed" not in events.read_bytes():
            time.sleep(0.05)
    assert b"typed" not in log.read_bytes().split(b"echo typed in")[0]
    # Typed input is an event of the event log (xenconsole/eventlog.py), beside the attach.
    recorded = parse_events(events.read_bytes())
    # The attach, and the detach of `a.close()` if the server saw it before it stopped.
    assert [(e.kind, e.who) for e in recorded if e.kind != "input"] in (
        [("attach", me)],
        [("attach", me), ("detach", me)],
    )
    inputs = [e for e in recorded if e.kind == "input"]
    assert {e.who for e in inputs} == {me}
    assert all(e.offset <= len(log.read_bytes()) for e in inputs)
    assert b"".join(e.data for e in inputs) == b"echo typed in\r"
    # One printable word per record: a space is \x20.
    assert all(" " not in ln.split(" input ")[1].split(" ", 1)[1]
               for ln in events.read_text().splitlines() if " input " in ln)  # fmt: skip


@pytest.mark.timeout(120)
def test_read_only_listener_sees_everything_and_cannot_write(tmp_path):
    with serve(*host_only(tmp_path), "--tcp-ro", "127.0.0.1:0", tcp=True, wait=True) as host:
        assert any(ln.startswith("xenconsole: tcp-ro 127.0.0.1:") for ln in host.ready_lines)
        a, seen = booted(host)
        spy = socket.create_connection(host.address("tcp-ro"))
        watched = bytearray()
        spy.sendall(b"echo from-spectator\r\x03")
        quiet(spy, watched, 1.0)
        run(a, seen, "echo from-writer")
        recv_until(spy, watched, rb"from-writer\r\n" + re.escape(PROMPT) + b"$")
        assert b"from-spectator" not in seen and b"from-spectator" not in watched
        assert bytes(watched) == b"echo from-writer\r\nfrom-writer\r\n" + PROMPT
        spy.close()
        a.close()


@pytest.mark.timeout(120)
def test_exclusive_writer_tells_a_second_writer_who_holds_the_line(tmp_path):
    with serve(*host_only(tmp_path), "--exclusive", tcp=True, wait=True) as host:
        a, seen = booted(host)
        run(a, seen, "echo first")  # a writes first: a holds the line
        b = socket.create_connection(host.address("tcp"))
        got = bytearray()
        b.sendall(b"echo second\r")
        holder = f"tcp:127.0.0.1:{a.getsockname()[1]}"
        recv_until(b, got, rb"\[xenconsole: line held by [^\]]*\]\r\n")
        m = re.search(rb"\r\n\[xenconsole: line held by (\S+) \(rw\) since \d\d:\d\d:\d\d; "
                      rb"read-only\]\r\n", bytes(got))  # fmt: skip
        assert m and m.group(1).decode() == holder, bytes(got)
        quiet(a, seen)
        assert b"second" not in seen  # it never reached the line
        a.close()
        for _ in range(50):  # until the server has seen a's end: then b is the writer
            got.clear()
            b.sendall(b"echo second-now\r")
            recv_until(b, got, rb"(second-now\r\n" + re.escape(PROMPT) + rb"|read-only\]\r\n)$")
            if got.endswith(PROMPT):
                break
            time.sleep(0.1)
        assert got == b"echo second-now\r\nsecond-now\r\n" + PROMPT
        b.close()


def test_who_lists_clients_mode_and_writer():
    from twisted.internet.task import Clock

    from xenconsole.hub import Hub

    class C:
        def __init__(self, name: str, ro: bool = False) -> None:
            self.name, self.got = name, b""
            if ro:
                self.read_only = True

        def deliver(self, data: bytes) -> None:
            self.got += data

    hub = Hub(Clock())
    hub.exclusive = True
    a, b, spy = C("telnet:127.0.0.1:1"), C("tcp:127.0.0.1:2"), C("tcp:127.0.0.1:3(ro)", True)
    typed = []
    hub.on_input = typed.append
    for c in (a, b, spy):
        hub.attach(c)
    hub.receive(b"x", a)
    hub.receive(b"y", b)
    hub.receive(b"z", spy)
    assert typed == [b"x"]
    assert [(w.name, w.mode, w.writer) for w in hub.who()] == [
        ("telnet:127.0.0.1:1", "rw", True),
        ("tcp:127.0.0.1:2", "rw", False),
        ("tcp:127.0.0.1:3(ro)", "ro", False),
    ]
    text = hub.who_text(b)
    assert re.fullmatch(
        r"\[who\] telnet:127\.0\.0\.1:1 rw since \d\d:\d\d:\d\d writer\r\n"
        r"\[who\] tcp:127\.0\.0\.1:2 rw since \d\d:\d\d:\d\d \(you\)\r\n"
        r"\[who\] tcp:127\.0\.0\.1:3\(ro\) ro since \d\d:\d\d:\d\d\r\n",
        text,
    ), text
    assert b"line held by telnet:127.0.0.1:1 (rw)" in b.got and spy.got == b""
    hub.detach(a)
    hub.receive(b"w", b)  # the holder left: the next writer takes the line
    assert typed == [b"x", b"w"] and hub.who()[0].writer


@pytest.mark.timeout(120)
def test_who_over_telnet_ayt_lists_every_client(tmp_path):
    args = (*host_only(tmp_path), "--tcp-ro", "127.0.0.1:0")
    with serve(*args, tcp=True, telnet=True, wait=True) as host:
        a, seen = booted(host)
        spy = socket.create_connection(host.address("tcp-ro"))
        t = socket.create_connection(host.address("telnet"))
        got = bytearray()
        quiet(t, got, 1.0)  # negotiation and nothing else
        t.sendall(bytes([255, 246]))  # IAC AYT, as `telnet`'s `send ayt`
        recv_until(t, got, rb"\[yes\]\r\n(\[who\] [^\r]*\r\n){3}")
        lines = re.findall(rb"\[who\] ([^\r]*)\r\n", bytes(got))
        port = lambda s: s.getsockname()[1]  # noqa: E731
        assert [re.sub(rb" since \d\d:\d\d:\d\d", b"", ln).decode() for ln in lines] == [
            f"tcp:127.0.0.1:{port(a)} rw",
            f"tcp:127.0.0.1:{port(spy)}(ro) ro",
            f"telnet:127.0.0.1:{port(t)} rw (you)",
        ]
        quiet(a, seen)
        assert b"[who]" not in seen and b"[yes]" not in seen  # only the asker is told
        for s in (a, spy, t):
            s.close()


@pytest.mark.timeout(90)
def test_connect_menu_w_shows_who(tmp_path):
    from tests.e2e.test_connect import Term

    with serve(*host_only(tmp_path), wait=True) as host:
        url = host.urls["telnet"]
        t = Term(url)
        try:
            t.wait_text("root@dom0:~#")
            t.p.send("\x1d")
            t.wait_text("xenconsole menu")
            assert "w    who is attached (telnet)" in t.screen.text()
            t.p.send("w")
            t.wait_text("[yes]")
            t.pump(lambda: re.search(r"\[who\] telnet:127\.0\.0\.1:\d+ rw since \S+ \(you\)",
                                     t.screen.text()) is not None)  # fmt: skip
        finally:
            t.p.close(force=True)


@pytest.mark.timeout(120)
def test_who_over_the_control_channel(tmp_path):
    """`xenconsole who` (the control channel's `who` op, xenconsole/control.py): every client
    of the serial line, from where, rw or ro, and who holds it in exclusive mode."""
    import subprocess
    import sys

    sock = str(tmp_path / "control.sock")
    args = (*host_only(tmp_path), "--exclusive", "--tcp-ro", "127.0.0.1:0", "--control", sock)
    with serve(*args, tcp=True, telnet=False, wait=True) as host:
        a, seen = booted(host)
        run(a, seen, "echo first")  # a writes first: a holds the line
        spy = socket.create_connection(host.address("tcp-ro"))
        quiet(spy, bytearray(), 0.5)
        who = [sys.executable, "-m", "xenconsole", "who", "--control", sock]
        r = subprocess.run(who, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        lines = [re.sub(r" since \d\d:\d\d:\d\d", "", ln) for ln in r.stdout.splitlines()]
        assert lines == [
            f"[who] tcp:127.0.0.1:{a.getsockname()[1]} rw writer",
            f"[who] tcp:127.0.0.1:{spy.getsockname()[1]}(ro) ro",
        ]
        a.close()
        spy.close()
        for _ in range(100):  # until the server has seen both go
            r = subprocess.run(who, capture_output=True, text=True, timeout=60)
            if r.stdout == "":
                break
            time.sleep(0.1)
        assert (r.returncode, r.stdout) == (0, "")
    r = subprocess.run(who, capture_output=True, text=True, timeout=60)  # the server is gone
    assert r.returncode == 2
    assert r.stderr == f"xenconsole: error: cannot connect to {sock}: No such file or directory\n"
