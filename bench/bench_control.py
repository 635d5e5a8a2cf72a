"""Control latency while a guest computes or floods, and a served host's RSS in a flood.

1. In one process, one guest either computes forever (`add rax, 1` / `jmp`), floods the
   console hypercall (16 KiB `console_io` writes in a loop, 128 lines each), or floods
   ports (`out 0xe9` of 'B' with no newline, `out 0x80`, `in 0x71`, forever). For each
   control, `--tries` (50) times, with 10 ms between tries, the wall time of:
   `d` and `q` (their handlers, run as the serial line runs them), `xl pause` (the
   scheduler's domain_pause(), which returns once the vCPU is off its pCPU; unpaused after,
   untimed) and `xl destroy` (the machine's destroy_domain(); a fresh guest each try, left
   running 50 ms first). Prints p50 / p99 / max in ms.
2. A served host (`xenconsole serve` on 127.0.0.1, one TCP client reading everything) with
   the flood guest: the server's peak RSS sampled every 0.1 s over `--flood-seconds`, the
   round trip of `xl pause` / `xl unpause` / `xl destroy` typed at the dom0 prompt, and the
   bytes the client received.

    .venv/bin/python bench/bench_control.py [--tries 50] [--flood-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from guest_helpers import FLOOD  # noqa: E402  (the flooding guests the tests use)
from guest_helpers import PORT_FLOOD as PORTS  # noqa: E402

from emu.host import DomainSpec, HostConfig  # noqa: E402
from emu.machine import Machine  # noqa: E402
from keyhandlers import KEY_TABLE, load_builtin  # noqa: E402
from keyhandlers.dispatch import run_handler  # noqa: E402

load_builtin()  # the keys this benchmark presses, as `xenconsole serve` loads them

COMPUTE = "lp:\n    add rax, 1\n    jmp lp\n"




def pct(ts: list[float]) -> str:
    ts = sorted(ts)
    p99 = ts[min(len(ts) - 1, int(len(ts) * 0.99))]
    return f"{ts[len(ts) // 2]:7.2f} / {p99:7.2f} / {ts[-1]:7.2f}"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def control_latency(src: Path, tries: int) -> dict[str, list[float]]:
    m = Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=64 << 20)).boot_sync()
    m.console.sinks.append(lambda b: None)
    spec = DomainSpec(name="g", memory=16, workload=f"asm:{src}")
    dom = m.create_domain(spec)
    time.sleep(0.2)
    out: dict[str, list[float]] = {k: [] for k in ("d", "q", "xl pause", "xl destroy")}
    for k in "dq":
        for _ in range(tries):
            out[k].append(timed(lambda k=k: run_handler(m, KEY_TABLE[k])))
            time.sleep(0.01)
    for _ in range(tries):
        out["xl pause"].append(timed(lambda: m.sched.pause_domain(dom)))
        m.sched.unpause_domain(dom)
        time.sleep(0.01)
    m.destroy_domain(dom)
    for i in range(tries):
        d = m.create_domain(DomainSpec(name=f"g{i}", memory=16, workload=f"asm:{src}"))
        time.sleep(0.05)
        out["xl destroy"].append(timed(lambda d=d: m.destroy_domain(d)))
    print(f"    hook stops of the last guest's vCPU: {d.vcpus[0].stats['hook_stops']}")
    m.shutdown()
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def served_flood(src: Path, seconds: float) -> None:
    from tests.console_hosts import host_only
    from xenconsole.expect import Console
    from xenconsole.testing import serve

    host_files = ("--dom0-root", "/")  # the asm file is read by its host path
    with tempfile.TemporaryDirectory() as d, serve(*host_only(Path(d)), *host_files) as host:
        pid = host.proc.pid
        url = host.urls["tcp"]
        with Console.open(url) as con:
            args = f"'name=\"flood\"' memory=16 'workload=\"asm:{src}\"'"
            con.run(f"xl create /dev/null {args}", check=True)
        # One raw client from here on: it reads everything as fast as it can and, to time a
        # command, types it with an `echo` whose output (not its echo) marks the end.
        h, port = url.split("://", 1)[1].rsplit(":", 1)
        sock = socket.create_connection((h, int(port)))
        got, marks, stop = [0], {}, threading.Event()

        def drain() -> None:
            tail = b""
            while not stop.is_set():
                try:
                    b = sock.recv(1 << 16)
                except OSError:
                    return
                if not b:
                    return
                got[0] += len(b)
                buf = tail + b
                for mk in list(marks):
                    if marks[mk] is None and mk in buf:
                        marks[mk] = time.perf_counter()
                tail = buf[-64:]

        threading.Thread(target=drain, daemon=True).start()
        rss0 = rss_kib(pid)
        peak, end = rss0, time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.1)
        rtt = {}
        for i, cmd in enumerate(("xl pause flood", "xl unpause flood", "xl destroy flood")):
            mk = f"MK{i}DONE".encode()
            marks[mk] = None
            t = time.perf_counter()
            sock.sendall(f"\x15{cmd}; echo MK{i}''DONE\r".encode())
            while marks[mk] is None and time.perf_counter() - t < 120:
                peak = max(peak, rss_kib(pid))
                time.sleep(0.001)
            rtt[cmd] = ((marks[mk] or float("nan")) - t) * 1000
        stop.set()
        sock.close()
    print(
        f"  served host, flood for {seconds:g} s: server RSS {rss0 / 1024:.0f} MiB before,"
        f" peak {peak / 1024:.0f} MiB; a reading client got {got[0] / 1e6:.1f} MB"
    )
    for cmd, ms in rtt.items():
        print(f"    `{cmd}` typed at the dom0 prompt, until its output: {ms:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tries", type=int, default=50)
    ap.add_argument("--flood-seconds", type=float, default=10.0)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        for name, body in (("compute", COMPUTE), ("flood", FLOOD), ("ports", PORTS)):
            src = Path(d) / f"{name}.S"
            src.write_text(body)
            print(f"  one guest, {name}; {a.tries} tries each, p50 / p99 / max ms:", flush=True)
            for k, ts in control_latency(src, a.tries).items():
                print(f"    {k:<11} {pct(ts)}")
        served_flood(Path(d) / "flood.S", a.flood_seconds)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
