"""The host-side `xl` under load: N parallel clients run `xenconsole xl list` M times each
(real processes, as scripts would) against one served host with a spinning guest, while a
serial user types. Prints the answers' count, how many were wrong, p50 / p99 / max wall time
per command, and commands per second.

    .venv/bin/python bench/bench_hostxl.py [--clients 20] [--rounds 50] [--in-process]

`--in-process` speaks the protocol from threads (xenconsole/xlclient.py's Channel) instead
of starting a process per command: the server's own cost without Python's start-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xenconsole.testing import serve  # noqa: E402
from xenconsole.xlclient import Channel, connect  # noqa: E402

HOST_ONLY = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "512M"\n'


def one_in_process(sock: str) -> tuple[int, str]:
    ch = Channel(connect(sock))
    try:
        ch.send({"op": "xl", "args": ["list"]})
        out = []
        while True:
            msg = ch.recv()
            if msg is None:
                return -1, ""
            if "exit" in msg:
                return msg["exit"], "".join(out)
            out.append(msg.get("out", ""))
    finally:
        ch.close()


def one_process(sock: str) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "xenconsole", "xl", "--control", sock, "list"],
        capture_output=True,
        text=True,
    )
    return r.returncode, r.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--in-process", action="store_true")
    a = ap.parse_args()
    run = one_in_process if a.in_process else one_process
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "host.toml"
        cfg.write_text(HOST_ONLY)
        sock = str(Path(tmp) / "c.sock")
        with serve("--config", str(cfg), "--control", sock) as host:
            host.wait_booted()
            assert host.xl("create", "spin.cfg").returncode == 0
            status, reference = one_in_process(sock)
            lines = len(reference.splitlines())
            times: list[float] = []
            wrong = [0]
            stop = threading.Event()

            def client() -> None:
                for _ in range(a.rounds):
                    t0 = time.perf_counter()
                    status, out = run(sock)
                    times.append(time.perf_counter() - t0)
                    if status != 0 or len(out.splitlines()) != lines or "spin" not in out:
                        wrong[0] += 1

            def typist() -> None:
                with host.console("tcp", timeout=60) as con:
                    i = 0
                    while not stop.is_set():
                        if con.run(f"echo t{i}") != f"t{i}\n":
                            wrong[0] += 1
                        i += 1

            user = threading.Thread(target=typist)
            user.start()
            threads = [threading.Thread(target=client) for _ in range(a.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            stop.set()
            user.join()
    ms = sorted(t * 1000 for t in times)
    print(
        f"{'in-process' if a.in_process else 'processes'}: {len(ms)} answers, {wrong[0]} wrong; "
        f"p50 {statistics.median(ms):.1f} ms, p99 {ms[int(len(ms) * 0.99) - 1]:.1f} ms, "
        f"max {ms[-1]:.1f} ms; {len(ms) / wall:.0f} commands/s over {wall:.1f} s"
    )
    return 1 if wrong[0] else 0


if __name__ == "__main__":
    sys.exit(main())
