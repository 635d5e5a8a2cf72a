"""Plugins: `--plugin MODULE`, the `xenconsole.keyhandlers` entry point, the example plugin."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_hosts import host_only

from xenconsole.testing import ServeError, serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "examples" / "xenconsole_example_plugin"
PROMPT = b"root@dom0:~# "
Y_LINE = " key 'y' (ascii '79') => dump domain memory summary (example plugin)"
D0_LINE = b"(XEN) d0 Domain-0: 131072 pages (512 MiB), 2 vCPUs\r\n"

BROKEN = """
from keyhandlers import keyhandler


@keyhandler("j", "raise an exception (broken plugin)")
def boom(machine, out, args):
    out("about to fail")
    raise RuntimeError("boom")


@keyhandler("k", "call sys.exit (broken plugin)")
def leave(machine, out, args):
    raise SystemExit(3)
"""

TAKES_H = """
from keyhandlers import keyhandler


@keyhandler("h", "my own help")
def my_help(machine, out, args):
    out("mine")
"""


def pythonpath(*dirs: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(str(d) for d in dirs)}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xenconsole", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def entry_point_dist(tmp_path: Path) -> Path:
    """What `pip install examples/xenconsole_example_plugin` leaves behind, minus the copy."""
    site = tmp_path / "site"
    info = site / "xenconsole_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: xenconsole-example-plugin\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[xenconsole.keyhandlers]\nexample = xenconsole_example_plugin\n"
    )
    return site


class Line:
    """A raw TCP client that reads up to a marker."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr)
        self.buf = bytearray()

    def until(self, marker: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{marker!r} not seen in {bytes(self.buf[-400:])!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.buf += chunk
        i = self.buf.index(marker) + len(marker)
        out, self.buf = bytes(self.buf[:i]), self.buf[i:]
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_keys_lists_the_plugin_key_in_ascii_order() -> None:
    r = run_cli("keys", "--plugin", "xenconsole_example_plugin", env=pythonpath(EXAMPLE_DIR))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "'h' pressed -> showing installed handlers"
    assert Y_LINE in lines
    keys = [re.match(r" key '(.)'", line).group(1) for line in lines[1:]]
    assert keys == sorted(keys) and keys.count("y") == 1
    plain = run_cli("keys", env=pythonpath(EXAMPLE_DIR))
    assert Y_LINE not in plain.stdout.splitlines()  # not installed, not named: not loaded


def test_entry_point_plugins_load_without_naming_them(tmp_path) -> None:
    r = run_cli("keys", env=pythonpath(entry_point_dist(tmp_path), EXAMPLE_DIR))
    assert r.returncode == 0, r.stderr
    assert Y_LINE in r.stdout.splitlines()
    # Named as well: loaded once, no "already registered" refusal.
    r = run_cli(
        "keys",
        "--plugin",
        "xenconsole_example_plugin",
        env=pythonpath(entry_point_dist(tmp_path / "b"), EXAMPLE_DIR),
    )
    assert r.returncode == 0, r.stderr


def test_a_plugin_taking_a_used_key_is_refused_at_start(tmp_path) -> None:
    (tmp_path / "takes_h.py").write_text(TAKES_H)
    env = pythonpath(tmp_path)
    want = (
        "xenconsole: error: plugin: key 'h' is already registered (show this message)"
        " by keyhandlers.core\n"
    )
    r = run_cli("serve", "--plugin", "takes_h", "--telnet", "127.0.0.1:0", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", want)
    r = run_cli("keys", "--plugin", "takes_h", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", want)
    r = run_cli("serve", "--plugin", "no_such_plugin", env=env)
    assert r.returncode == 2
    assert r.stderr == "xenconsole: error: plugin: No module named 'no_such_plugin'\n"
    with pytest.raises(ServeError, match="already registered"):
        with serve("--plugin", "takes_h", env=env):
            pass


@pytest.mark.timeout(60)
def test_example_plugin_key_on_the_serial_line_and_via_xl_debug_keys(tmp_path) -> None:
    env = pythonpath(entry_point_dist(tmp_path), EXAMPLE_DIR)
    with serve(*host_only(tmp_path), env=env) as host:
        line = Line(host.address("tcp"))
        try:
            line.send(b"\r")
            line.until(PROMPT)
            line.send(b"\x01\x01\x01h")
            out = line.until(b"(XEN) " + Y_LINE.encode() + b"\r\n")
            assert b"(XEN)  key 'w' (ascii '77') => synchronously dump" in out  # ASCII order
            line.send(b"y")
            assert line.until(b"y args> ").endswith(
                b"(XEN) 'y' pressed -> dumping domain memory summary\r\n(XEN) y args> "
            )
            line.send(b"\r")
            out = line.until(b" s\r\n")
            assert out.startswith(b"\r\n" + D0_LINE)
            summary = out[2 + len(D0_LINE) :]
            assert re.fullmatch(rb"\(XEN\) 1 domain\(s\), host uptime \d+ s\r\n", summary)
            line.send(b"yd7\r")
            assert line.until(b"d7\r\n(XEN) 'y': no domain d7\r\n")
            line.send(b"\x01\x01\x01")
            line.until(b"Serial input to DOM0")
            line.send(b"xl debug-keys y d0\r")
            out = line.until(PROMPT)
            assert out.startswith(
                b" (type 'CTRL-a' three times to switch input)\r\n"
                b"xl debug-keys y d0\r\n"
                b"(XEN) 'y' pressed -> dumping domain memory summary\r\n" + D0_LINE
            )
            line.send(b"xl debug-keys y dx\r")
            assert b"(XEN) 'y': bad domain 'dx' (expected dN)\r\n" in line.until(PROMPT)
        finally:
            line.close()


@pytest.mark.timeout(60)
def test_a_broken_plugin_cannot_take_the_server_down(tmp_path) -> None:
    (tmp_path / "broken_plugin.py").write_text(BROKEN)
    env = pythonpath(tmp_path)
    with serve(*host_only(tmp_path), "--plugin", "broken_plugin", env=env) as host:
        line = Line(host.address("tcp"))
        try:
            line.send(b"\r")
            line.until(PROMPT)
            line.send(b"\x01\x01\x01j")
            out = line.until(b"boom\r\n")
            assert out.endswith(
                b"(XEN) about to fail\r\n(XEN) 'j' handler failed: RuntimeError: boom\r\n"
            )
            line.send(b"k")
            assert line.until(b"\r\n") == b"(XEN) 'k' handler failed: SystemExit: 3\r\n"
            line.send(b"\x01\x01\x01xl debug-keys j\r")
            out = line.until(PROMPT)
            assert b"(XEN) 'j' handler failed: RuntimeError: boom\r\n" in out
            assert b"Traceback" not in out
            line.send(b"xl list\r")
            assert b"Domain-0 " in line.until(PROMPT)
        finally:
            line.close()
        assert host.proc.poll() is None
