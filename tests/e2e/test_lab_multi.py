"""Issue 13 part 8: several hosts in one server (`xenconsole serve --config lab.toml`), each
with its own machine, listeners and log; SIGHUP reopens every log; --pidfile."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from xenconsole.eventlog import read_events

PROMPT = b"root@dom0:~# "
pytestmark = pytest.mark.e2e
XC = [sys.executable, "-m", "xenconsole"]


def recv_until(sock, pattern: bytes, timeout: float = 60) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while not re.search(pattern, buf):
        d = sock.recv(65536)
        if not d:
            raise AssertionError(f"closed; got {buf[-300:]!r}")
        buf += d
    return buf


def wait_for(pred, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def write_lab(d) -> None:
    (d / "small.toml").write_text('[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n')
    (d / "two.toml").write_text('[host]\nmemory = "512M"\ncpus = 2\ndom0_mem = "128M"\n')
    (d / "lab.toml").write_text(
        '[server]\npidfile = "xc.pid"\n\n'
        '[[console]]\nname = "xen1"\nconfig = "small.toml"\ntcp = "127.0.0.1:0"\n'
        'log = "xen1.log"\nlog_events = true\nno_wait = true\n\n'
        '[[console]]\nname = "xen2"\nconfig = "two.toml"\ntelnet = "127.0.0.1:0"\n'
        'tcp = "127.0.0.1:0"\ntcp_ro = ["127.0.0.1:0"]\nlog = "xen2.log"\n'
        "log_timestamps = true\n"
    )


def start(d) -> tuple[subprocess.Popen, dict[str, tuple[str, int]]]:
    proc = subprocess.Popen([*XC, "serve", "--config", str(d / "lab.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    where = {}
    while True:
        line = proc.stdout.readline().decode()
        assert line, proc.stderr.read().decode()
        if line == "xenconsole: ready\n":
            return proc, where
        m = re.fullmatch(r"xenconsole: (\S+) (\S+) 127\.0\.0\.1:(\d+)\n", line)
        assert m, line
        where[f"{m.group(1)} {m.group(2)}"] = ("127.0.0.1", int(m.group(3)))


@pytest.mark.timeout(180)
def test_two_hosts_in_one_server_with_separate_logs_sighup_and_pidfile(tmp_path):
    write_lab(tmp_path)
    proc, where = start(tmp_path)
    try:
        assert sorted(where) == ["xen1 tcp", "xen2 tcp", "xen2 tcp-ro", "xen2 telnet"]
        assert (tmp_path / "xc.pid").read_text() == f"{proc.pid}\n"
        a = socket.create_connection(where["xen1 tcp"])
        b = socket.create_connection(where["xen2 tcp"])
        for s in (a, b):
            s.sendall(b"\r")
            recv_until(s, re.escape(PROMPT) + b"$")
        a.sendall(b"xl info\r")
        b.sendall(b"xl info\r")
        out1 = recv_until(a, rb"nr_cpus\s+: \d+[\s\S]*" + re.escape(PROMPT) + b"$").decode()
        out2 = recv_until(b, rb"nr_cpus\s+: \d+[\s\S]*" + re.escape(PROMPT) + b"$").decode()
        assert re.search(r"^nr_cpus\s+: 1\r$", out1, re.M), out1  # two machines
        assert re.search(r"^nr_cpus\s+: 2\r$", out2, re.M), out2
        a.sendall(b"echo only-on-xen1\r")
        recv_until(a, rb"only-on-xen1\r\n" + re.escape(PROMPT) + b"$")
        b.sendall(b"echo only-on-xen2\r")
        recv_until(b, rb"only-on-xen2\r\n" + re.escape(PROMPT) + b"$")
        log1, log2 = tmp_path / "xen1.log", tmp_path / "xen2.log"
        assert wait_for(lambda: b"only-on-xen1\r\n" + PROMPT in log1.read_bytes())
        assert wait_for(lambda: b"only-on-xen2\r\n" in log2.read_bytes())  # then a stamp
        assert b"only-on-xen2" not in log1.read_bytes()
        assert b"only-on-xen1" not in log2.read_bytes()
        assert re.match(rb"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] ", log2.read_bytes())
        # logrotate: rename every file, SIGHUP, all reopen (xen1's events file too).
        events1 = tmp_path / "xen1.log.events"
        assert [e.kind for e in read_events(str(log1))] == ["attach"]
        log1.rename(tmp_path / "xen1.log.1")
        events1.rename(tmp_path / "xen1.log.events.1")
        log2.rename(tmp_path / "xen2.log.1")
        os.kill(proc.pid, signal.SIGHUP)
        assert wait_for(lambda: log1.exists() and log2.exists() and events1.exists())
        a.sendall(b"echo rotated1\r")
        recv_until(a, rb"rotated1\r\n" + re.escape(PROMPT) + b"$")
        assert wait_for(lambda: log1.read_bytes() == b"echo rotated1\r\nrotated1\r\n" + PROMPT)
        assert proc.poll() is None
        a.close()
        b.close()
        assert wait_for(lambda: events1.read_bytes() != b"")
        assert [(e.kind, e.offset) for e in read_events(str(log1))] == [
            ("detach", len(b"echo rotated1\r\nrotated1\r\n" + PROMPT))
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (tmp_path / "xc.pid").exists()
    assert "Traceback" not in proc.stderr.read().decode()


@pytest.mark.timeout(60)
def test_lab_file_errors_are_one_line(tmp_path):
    cases = [
        ('[[console]]\nname = "a"\ntcp = "127.0.0.1:0"\nbogus = 1\n',
         "console a: unknown key 'bogus'"),
        ('[[console]]\nname = "a"\n[[console]]\nname = "a"\n', "LAB: duplicate console 'a'"),
        ('[[console]]\nname = "a b"\n', "LAB: console 0: name must be [A-Za-z0-9_.-]+"),
        ('[[console]]\nname = "a"\ntelnet = "0.0.0.0:0"\n',
         "console a: --telnet 0.0.0.0:0: not loopback; a console off this machine needs "
         "--tls-cert/--tls-key/--tls-ca (client certificates) or --password-file"),
        ('[[console]]\nname = "a"\nmemory = "1K"\n',
         "console a: host memory must be between 64M and 64G, got 0M"),
    ]  # fmt: skip
    lab = tmp_path / "lab.toml"
    for text, msg in cases:
        lab.write_text(text)
        r = subprocess.run([*XC, "serve", "--config", str(lab)], capture_output=True, timeout=30)
        assert r.returncode == 2 and r.stdout == b""
        assert r.stderr.decode() == f"xenconsole: error: {msg.replace('LAB', str(lab))}\n"
    lab.write_text('[[console]]\nname = "a"\n')
    r = subprocess.run([*XC, "serve", "--config", str(lab), "--tcp", "127.0.0.1:0"],
                       capture_output=True, timeout=30)  # fmt: skip
    assert r.stderr.decode() == (
        f"xenconsole: error: --tcp: with a lab file, set it per [[console]] in {lab}\n"
    )
