"""`xenconsole connect` figures: keystroke-to-screen latency and flood throughput.

The client reads the connection in a plain thread and wakes prompt_toolkit's asyncio loop
once per received batch. The baseline, in the same process against the same server, is a
raw TCP socket doing the same echo round trip and reading the same flood with no UI at all.

    .venv/bin/python bench/bench_connect.py [--keys 100]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pexpect  # noqa: E402

from xenconsole.testing import serve  # noqa: E402
from xenconsole.vt import Screen  # noqa: E402

HOST_ONLY = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "512M"\n'
PROMPT = b"root@dom0:~# "
KEYS = "QRSTUVWXYZ"  # letters that no escape sequence or status text of the client contains


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        buf += sock.recv(65536)
    return buf


def raw_echo(addr, n: int) -> list[float]:
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\r")
    recv_until(s, PROMPT)
    times = []
    for i in range(n):
        c = KEYS[i % 10 : i % 10 + 1].encode()
        t = time.perf_counter()
        s.sendall(c)
        recv_until(s, c)
        times.append(time.perf_counter() - t)
    s.sendall(b"\x15")  # Ctrl-U: abandon the line
    t = time.perf_counter()
    s.sendall(b"xl dmesg\rflood-end\r")
    recv_until(s, b"flood-end: command not found")
    flood = time.perf_counter() - t
    s.close()
    return times, flood


def client_echo(url: str, n: int) -> tuple[list[float], float]:
    p = pexpect.spawn(
        sys.executable,
        ["-m", "xenconsole", "connect", url],
        dimensions=(24, 80),
        env={"TERM": "xterm", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        timeout=30,
    )
    p.delaybeforesend = None  # pexpect's default 50 ms pause would dominate the figure
    p.expect_exact("Ctrl-] menu")  # the client is up: keys typed now reach the host
    p.send("\r")
    p.expect_exact("root@dom0:~#")
    time.sleep(0.5)
    try:  # drop what the client drew so far
        p.read_nonblocking(1 << 20, timeout=0.2)
    except pexpect.TIMEOUT:
        pass
    times = []
    for i in range(n):
        c = KEYS[i % 10]
        t = time.perf_counter()
        p.send(c)
        p.expect_exact(c)  # the client drew the echoed character
        times.append(time.perf_counter() - t)
    p.send("\x15")
    t = time.perf_counter()
    p.send("xl dmesg\rflood-end\r")
    screen = Screen(80, 24)  # what the terminal shows: the renderer skips unchanged cells
    while "flood-end: command not found" not in screen.text():
        try:
            screen.feed_bytes(p.read_nonblocking(1 << 20, timeout=30))
        except pexpect.TIMEOUT:
            raise SystemExit("the client never showed the end of the flood") from None
    flood = time.perf_counter() - t
    p.send("\x1d")
    p.expect_exact("xenconsole menu")
    p.send("q")
    p.expect(pexpect.EOF)
    return times, flood


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "host.toml"
        cfg.write_text(HOST_ONLY)
        with serve("--config", str(cfg)) as host:
            s = socket.create_connection(host.address("tcp"))
            s.sendall(b"\r")
            recv_until(s, PROMPT)
            s.sendall(b"xl debug-keys h\r" * 8 + b"fill-end\r")  # a full 16 KiB ring to dump
            recv_until(s, b"fill-end: command not found")
            s.close()
            raw, raw_flood = raw_echo(host.address("tcp"), a.keys)
            cli, cli_flood = client_echo(host.urls["tcp"], a.keys)
    rm, cm = statistics.median(raw), statistics.median(cli)

    def p90(xs: list[float]) -> float:
        return sorted(xs)[int(0.9 * len(xs))]

    print(f"keystroke echo, {a.keys} keys (median / p90):")
    print(f"  raw TCP socket       {rm * 1e3:7.2f} ms / {p90(raw) * 1e3:.2f} ms")
    print(f"  xenconsole connect   {cm * 1e3:7.2f} ms / {p90(cli) * 1e3:.2f} ms")
    print(f"  ratio                {cm / rm:7.1f}x")
    print("xl dmesg (16 KiB ring) until the next prompt is on screen:")
    print(f"  raw TCP socket       {raw_flood * 1e3:7.2f} ms")
    print(f"  xenconsole connect   {cli_flood * 1e3:7.2f} ms   ratio {cli_flood / raw_flood:.1f}x")


if __name__ == "__main__":
    main()
