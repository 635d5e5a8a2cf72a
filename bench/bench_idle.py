"""Idle CPU of `xenconsole serve` with the default host (issue 13 defect 4).

Starts the server (default host, powered on at once), waits until both default guests have
printed their one line of work, detaches, then reads the server process's CPU time
(utime + stime of all its threads, /proc/PID/stat) over `--seconds` of idling. The target
is under 2% of one core. The baseline in the same run: a `sleep` process over the same time.

    .venv/bin/python bench/bench_idle.py [--seconds 60] [--config FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xenconsole.testing import serve  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
DONE = (rb"\(d1\) touch done \d+", rb"\(d2\) touch done \d+")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_guests(addr, timeout: float = 120) -> None:
    s = socket.create_connection(addr)
    s.settimeout(timeout)
    buf, end = b"", time.monotonic() + timeout
    while not all(re.search(p, buf) for p in DONE):
        if time.monotonic() > end:
            raise SystemExit(f"guests did not finish: {buf[-400:]!r}")
        buf += s.recv(65536)
    s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--config", help="host config (default: the embedded default host)")
    a = ap.parse_args()
    extra = ("--config", a.config) if a.config else ()
    with serve(*extra, tcp=True, wait=True) as host:  # boots at our attach: we see it all
        wait_guests(host.address("tcp"))
        time.sleep(1.0)  # let the last output and the detach settle
        pid = host.proc.pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(a.seconds)
        c1, t1 = cpu_seconds(pid), time.monotonic()
    base = subprocess.run(
        ["bash", "-c", f"sleep {a.seconds}; cat /proc/$$/stat"], capture_output=True, text=True
    )
    bf = base.stdout.rsplit(")", 1)[1].split()
    base_cpu = (int(bf[11]) + int(bf[12])) / TICK
    wall = t1 - t0
    print(
        f"idle server: {c1 - c0:.2f} s CPU over {wall:.1f} s = {100 * (c1 - c0) / wall:.2f}% "
        f"of one core (target < 2%); baseline `sleep`: {base_cpu:.2f} s"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
