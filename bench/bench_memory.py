"""Memory-model figures: boot time and `q` `m` `H` `F` handler times on 4G and 64G hosts
(`F` is our full audit; `O` is Xen's audit toggle and costs nothing),
beside a naive per-frame Python loop doing the audit's classification (same process).

    .venv/bin/python bench/bench_memory.py [--sizes 4G,64G] [--sample 200000]

The naive loop over every frame of a 64 GiB host (16M frames) would take minutes, so it runs
on a sample of frames spread over the whole table and the time is extrapolated linearly;
the output says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emu.audit import audit_full, audit_naive  # noqa: E402
from emu.boot import boot_sync  # noqa: E402
from emu.host import DomainSpec, HostConfig, parse_size  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.mm.page_info import PAGE_INFO_BYTES  # noqa: E402
from keyhandlers import KEY_TABLE, load_builtin  # noqa: E402

load_builtin()  # the keys this benchmark presses, as `xenconsole serve` loads them


class Sink:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, line: str = "") -> None:
        self.n += 1


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` runs (the host is shared: see also cpu_of)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_of(fn, repeat: int = 3) -> float:
    """Best CPU time of this process over `repeat` runs (numpy work is single-threaded)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


def bench_host(size: str, sample: int) -> None:
    mem = parse_size(size)
    host = HostConfig(memory=mem, cpus=2, dom0_mem=min(mem // 8, 4 << 30))
    t = time.perf_counter()
    m = Machine(host)
    t_init = time.perf_counter() - t
    t = time.perf_counter()
    boot_sync(m)
    t_boot = time.perf_counter() - t
    nr = m.ram.nr_frames
    print(f"\n== host {size}: {nr} frames, dom0 {host.dom0_mem >> 20} MiB ==")
    print(
        f"boot: machine (RAM map, frame table, heap) {t_init * 1e3:8.1f} ms, "
        f"boot log + dom0 build {t_boot * 1e3:8.1f} ms, total {(t_init + t_boot):6.2f} s"
    )
    print(
        f"frame table: {PAGE_INFO_BYTES} bytes/frame, {m.frames.nbytes >> 20} MiB; "
        f"M2P {m.m2p.nbytes >> 20} MiB; process RSS after boot {rss_mb():.0f} MiB"
    )
    t = time.perf_counter()
    dom = m.create_domain(DomainSpec(name="bench", memory=min(mem >> 22, 8192), workload="idle"))
    t_create = time.perf_counter() - t
    t = time.perf_counter()
    m.set_target(dom, dom.tot_pages // 2)
    t_down = time.perf_counter() - t
    t = time.perf_counter()
    m.set_target(dom, dom.target_pages * 2)
    t_up = time.perf_counter() - t
    print(
        f"xl create {dom.tot_pages >> 8} MiB: {t_create * 1e3:.1f} ms; balloon down half "
        f"{t_down * 1e3:.1f} ms; up again {t_up * 1e3:.1f} ms"
    )
    print(
        f"guest RAM resident {max(m.ram.resident_bytes(), 0) >> 20} MiB of {mem >> 20} MiB "
        f"(sparse mapping; scrubbed frames went back to the OS)"
    )
    for key in "qmHF":
        kh = KEY_TABLE[key]
        sink = Sink()
        t = time.perf_counter()
        kh.fn(m, sink, ())
        first = time.perf_counter() - t
        dt = best_of(lambda kh=kh, sink=sink: kh.fn(m, sink, ()))
        cpu = cpu_of(lambda kh=kh, sink=sink: kh.fn(m, sink, ()))
        print(
            f"key {key}: {dt * 1e3:9.2f} ms handler time, {cpu * 1e3:8.2f} ms CPU (best of 3; "
            f"first press {first * 1e3:.2f} ms), {sink.n // 7} lines"
        )
    t_vec = best_of(lambda: audit_full(m))
    c_vec = cpu_of(lambda: audit_full(m))
    res = audit_full(m)
    assert res.ok, res.violations
    step = max(1, nr // sample)
    frames = range(0, nr, step)
    t, c = time.perf_counter(), time.process_time()
    counts, wrong = audit_naive(m, frames)
    t_sample = time.perf_counter() - t
    c_naive = (time.process_time() - c) * nr / len(frames)
    t_naive = t_sample * nr / len(frames)
    assert wrong == 0
    how = "all frames" if step == 1 else f"sampled {len(frames)} frames, extrapolated to {nr}"
    print(
        f"audit, vectorised (numpy, whole table): {t_vec * 1e3:9.1f} ms, {c_vec * 1e3:.1f} ms CPU"
    )
    print(
        f"audit, naive per-frame Python loop ({how}): {t_naive:9.1f} s, {c_naive:.1f} s CPU "
        f"(sample took {t_sample:.2f} s)"
    )
    print(
        f"ratio naive / vectorised: {t_naive / t_vec:.0f}x wall, "
        f"{c_naive / max(c_vec, 1e-9):.0f}x CPU"
    )
    m.destroy_domain(dom)
    m.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4G,64G")
    ap.add_argument("--sample", type=int, default=200_000)
    args = ap.parse_args()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    for size in args.sizes.split(","):
        bench_host(size.strip(), args.sample)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
