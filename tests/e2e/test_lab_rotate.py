"""Issue 13: SIGHUP reopens every file the server writes beside a host -- the console log,
`FILE.events` (--log-events; --log-input adds typed input to it) -- after logrotate renames them,
against a real `xenconsole serve` on 127.0.0.1 (xenconsole/logfiles.py)."""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest
from guest_helpers import wait_for

from xenconsole.eventlog import parse_events
from xenconsole.testing import serve

PROMPT = b"root@dom0:~# "
pytestmark = pytest.mark.e2e
HOST_ONLY = '[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n'


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


def run(s: socket.socket, buf: bytearray, line: str) -> None:
    s.sendall(line.encode() + b"\r")
    recv_until(s, buf, re.escape(line.encode()) + rb"\r\n[\s\S]*" + re.escape(PROMPT) + b"$")


def typed(path) -> bytes:
    """The bytes of the `input` events in an events file (xenconsole/eventlog.py)."""
    return b"".join(e.data for e in parse_events(path.read_bytes()) if e.kind == "input")


def others(path) -> list:
    """The events that are not `input`."""
    return [e for e in parse_events(path.read_bytes()) if e.kind != "input"]


def name(s: socket.socket) -> str:
    return f"tcp:127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.timeout(120)
def test_sighup_reopens_the_log_and_the_events_file(tmp_path):
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST_ONLY)
    log = tmp_path / "console.log"
    events = inp = tmp_path / "console.log.events"  # typed input is an event too
    args = ("--config", str(cfg), "--log", str(log), "--log-events", "--log-input")
    with serve(*args, tcp=True, wait=True) as host:
        a, seen = socket.create_connection(host.address("tcp")), bytearray()
        recv_until(a, seen, re.escape(PROMPT) + b"$", 60)
        a_name = name(a)
        run(a, seen, "echo before")
        assert wait_for(lambda: typed(inp).endswith(b"echo before\r"))
        # logrotate without copytruncate: every file renamed, then `postrotate kill -HUP`.
        for f in (log, events):
            f.rename(f"{f}.1")
        host.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: log.exists() and events.exists())
        run(a, seen, "echo after")
        a.close()  # a detach, then an attach: both events belong in the new file
        b, got = socket.create_connection(host.address("tcp")), bytearray()
        b.sendall(b"\r")
        recv_until(b, got, re.escape(PROMPT) + b"$")
        assert wait_for(lambda: len(others(events)) == 2)
        assert wait_for(lambda: typed(inp) == b"echo after\r\r")
        new_log = b"echo after\r\nafter\r\n" + PROMPT
        assert wait_for(lambda: log.read_bytes() == new_log + b"\r\n" + PROMPT)
        new_events = others(events)
        assert [(e.kind, e.who, e.offset) for e in new_events] == [
            ("detach", a_name, len(new_log)),
            ("attach", name(b), len(new_log)),
        ]
        # The renamed files hold what came before the SIGHUP, and nothing after it.
        old_events = others(tmp_path / "console.log.events.1")
        assert [(e.kind, e.who) for e in old_events] == [("attach", a_name)]
        assert typed(tmp_path / "console.log.events.1").endswith(b"echo before\r")
        assert b"after" not in (tmp_path / "console.log.events.1").read_bytes()
        old_log = (tmp_path / "console.log.1").read_bytes()
        assert old_log.endswith(b"echo before\r\nbefore\r\n" + PROMPT)
        assert b"after" not in old_log
        b.close()
        assert host.proc.poll() is None
        assert "Traceback" not in host.stderr_text()


@pytest.mark.timeout(120)
def test_a_file_that_cannot_be_reopened_is_one_line_and_the_server_goes_on(tmp_path):
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST_ONLY)
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "console.log"
    args = ("--config", str(cfg), "--log", str(log), "--log-events", "--log-input")
    with serve(*args, tcp=True, wait=True) as host:
        a, seen = socket.create_connection(host.address("tcp")), bytearray()
        recv_until(a, seen, re.escape(PROMPT) + b"$", 60)
        logs.rename(tmp_path / "logs.1")  # the directory is gone: nothing can be reopened
        host.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: host.stderr_text().count("reopen failed") == 2)
        err = host.stderr_text().splitlines()
        assert err == [
            f"xenconsole: reopen failed: cannot open log {log}: No such file or directory",
            f"xenconsole: reopen failed: [Errno 2] No such file or directory: '{log}.events'",
        ]
        # Still serving, still writing the files it has.
        run(a, seen, "echo still")
        old = tmp_path / "logs.1" / "console.log"
        assert wait_for(lambda: old.read_bytes().endswith(b"echo still\r\nstill\r\n" + PROMPT))
        # The directory is back: the next SIGHUP reopens both.
        logs.mkdir()
        host.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: all(p.exists() for p in (log, logs / "console.log.events")))
        run(a, seen, "echo back")
        assert wait_for(lambda: log.read_bytes() == b"echo back\r\nback\r\n" + PROMPT)
        assert wait_for(lambda: typed(logs / "console.log.events") == b"echo back\r")
        a.close()
        assert wait_for(lambda: len(others(logs / "console.log.events")) == 1)
        assert host.proc.poll() is None
        assert "Traceback" not in host.stderr_text()
