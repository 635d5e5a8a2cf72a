"""Cost of `xenconsole record` and `xenconsole plot`: a 64 GiB host with 10 GiB of guests
sampled once a second, an hour's file, and drawing it.

    .venv/bin/python bench/bench_record.py [--memory 64G] [--guests 5] [--guest-mib 2064]
                                           [--samples 60] [--hour 3600] [--buckets 256]

What is real: the host and its guests (`create_domain`, shadow paging, Unicorn): guests 0
and 1 run `random:ws=65536` (reads over 256 MiB, forever), the others `touch:pages=100000,
stride=4` then idle. One sample is what the control channel's `access` request does on the
server (keyhandlers/access.py `sample`: U for every guest, then Z, plus encoding the JSON
line) and what `record` does with it (decoding, `Series.add`); each side's CPU is the
calling thread's own (`time.thread_time`), so the guests' vCPU threads do not count.
`--samples` real samples are taken back to back.

An hour (`--hour` samples) is made of those real samples, cycled (the period is far beyond
zlib's 32 KiB window, so compression gains nothing from the repetition), and written as
`record` writes it; a second file with random bucket counts is the incompressible worst
case. The checkpoint (the whole file rewritten every `--checkpoint` s, default 300) is
timed on the hour's file.
Drawing: `plot`'s `draw()` on the hour, PNG and SVG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from emu.boot import boot_sync  # noqa: E402
from emu.host import DomainSpec, HostConfig, parse_size  # noqa: E402
from emu.machine import Machine  # noqa: E402
from keyhandlers.access import sample  # noqa: E402
from xenconsole.plot import draw  # noqa: E402
from xenconsole.record import CHECKPOINT_S, Series, load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="64G")
    ap.add_argument("--guests", type=int, default=5)
    ap.add_argument("--guest-mib", type=int, default=2064)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--hour", type=int, default=3600)
    ap.add_argument("--buckets", type=int, default=256)
    args = ap.parse_args()
    m = boot_sync(Machine(HostConfig(memory=parse_size(args.memory), cpus=2, dom0_mem=1 << 30)))
    doms = []
    for i in range(args.guests):
        wl = "random:ws=65536" if i < 2 else "touch:pages=100000,stride=4"
        doms.append(m.create_domain(DomainSpec(name=f"g{i}", memory=args.guest_mib, workload=wl)))
    end = time.monotonic() + 900
    while not all("touch done" in "".join(d.hvm.console.lines) for d in doms[2:]):
        if time.monotonic() > end:
            raise SystemExit("guests did not finish touching in 900 s")
        time.sleep(0.5)
    sample(m, args.buckets, reset=True)  # the first window starts here
    server, client, wall, lines = [], [], [], []
    series = Series(args.buckets, 1.0)
    for _ in range(args.samples):
        time.sleep(0.2)  # let the guests run a little between samples
        t, c = time.perf_counter(), time.thread_time()
        s = sample(m, args.buckets, reset=True)
        line = json.dumps({"access": s}).encode() + b"\n"
        server.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
        c = time.thread_time()
        series.add(json.loads(line)["access"])
        client.append(time.thread_time() - c)
        lines.append(line)
    guest_pages = sum(d.tot_pages for d in doms)
    m.shutdown()
    hour = Series(args.buckets, 1.0)
    for i in range(args.hour):
        s = json.loads(lines[i % len(lines)])["access"]
        s["time_ns"] = int((i + 1) * 1e9)
        hour.add(s)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "hour.npz")
    t = time.perf_counter()
    c = time.process_time()
    hour.save(path)
    save_cpu = time.process_time() - c
    save_wall = time.perf_counter() - t
    size = os.path.getsize(path)
    rng = np.random.default_rng(1)
    for row in hour.rows:
        for d in row.values():
            own = np.asarray(d["bucket_owned"])
            d["bucket_window"] = rng.integers(0, own + 1).tolist()
    worst = os.path.join(tmp, "worst.npz")
    hour.save(worst)
    worst_size = os.path.getsize(worst)
    data = load(path)
    draws = {}
    for ext in ("png", "svg"):
        t, c = time.perf_counter(), time.process_time()
        draw(data, os.path.join(tmp, f"hour.{ext}"))
        draws[ext] = (time.perf_counter() - t, time.process_time() - c)
    per = statistics.median(server) + statistics.median(client) + save_cpu / CHECKPOINT_S
    print(
        f"bench_record: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"host {args.memory}, {args.guests} guests x {args.guest_mib} MiB = {guest_pages} "
        f"pages ({guest_pages / 262144:.2f} GiB); {args.samples} samples, "
        f"{args.buckets} buckets"
    )
    print(
        f"server per sample (U + Z of every guest, JSON line of {len(lines[-1])} bytes), "
        f"thread CPU: median {statistics.median(server) * 1e3:.1f} ms, max "
        f"{max(server) * 1e3:.1f} ms; wall median {statistics.median(wall) * 1e3:.1f} ms"
    )
    print(
        f"client per sample (decode, Series.add), thread CPU: median "
        f"{statistics.median(client) * 1e3:.2f} ms"
    )
    print(
        f"checkpoint of an hour's series ({args.hour} samples): {save_wall:.2f} s wall, "
        f"{save_cpu:.2f} s CPU, every {CHECKPOINT_S:.0f} s"
    )
    print(f"recording at 1 s: {per * 100:.2f}% of one core (server + client + checkpoints)")
    print(
        f"an hour's file: {size / 1e6:.2f} MB (real samples cycled); "
        f"{worst_size / 1e6:.2f} MB with random bucket counts (incompressible worst case)"
    )
    print(
        f"plot of the hour ({args.guests} domains), wall / CPU: PNG {draws['png'][0]:.2f} / "
        f"{draws['png'][1]:.2f} s, SVG {draws['svg'][0]:.2f} / {draws['svg'][1]:.2f} s "
        "(the first includes importing matplotlib)"
    )


if __name__ == "__main__":
    main()
