"""Accessed-page scan figures: key `U` over a 64 GiB host whose guests own over 10 GiB,
beside a per-page Python loop over the same frame table (same process, same numbers).

    .venv/bin/python bench/bench_scan.py [--memory 64G] [--guests 5] [--guest-mib 2064]
                                         [--touch 100000] [--stride 4] [--repeat 7]

Nothing is synthetic by default: the guests are real domains (`create_domain`: P2M, M2P,
frame table, their own page tables, shadow paging) running real `touch` workloads on
Unicorn, so the access record and the shadow L1 entries (with their hardware-set A/D bits)
are the ones the fault path and the emulated MMU wrote. Guests alternate read and write
touches. The handler timed is the real `U` handler (`keyhandlers.access`), with its
quiesce, machine lock, per-domain scan and heat line, printing into a counting sink.

The naive baseline walks every frame of the frame table in Python (owner from `v`, gfn from
the M2P, the record's bits), plus every entry of every shadow L1 table for the A bits, and
must produce the same pages/accessed/dirty/window counts; it does not draw the heat line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from emu.access.scan import scan_domain, tracked  # noqa: E402
from emu.boot import boot_sync  # noqa: E402
from emu.host import DomainSpec, HostConfig, parse_size  # noqa: E402
from emu.machine import Machine  # noqa: E402
from keyhandlers.access import parse_report, scan_accessed_pages  # noqa: E402

INVALID = (1 << 64) - 1
CHUNK = 1 << 20


class Sink(list):
    def __call__(self, line: str = "") -> None:
        self.append(line)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def naive_counts(m) -> dict[int, tuple[int, int, int, int]]:
    """Per-page Python loop: {domid: (pages, accessed, dirty, window)} for tracked guests."""
    doms = {d.domid for d in m.domains.values() if tracked(d)}
    # Shadow L1 entries with P and A: the window bits the hardware set since the last Z.
    hw_a: set[int] = set()
    u64 = m.ram.u64
    for d in m.domains.values():
        if d.domid not in doms:
            continue
        with m.quiesce(d):
            for smfn in d.paging.shadow_l1_mfns().tolist():
                for e in u64[smfn << 9 : (smfn + 1) << 9].tolist():
                    if e & 0x21 == 0x21:
                        hw_a.add((e & 0x000FFFFFFFFFF000) >> 12)
    acc = m.access
    v = m.frames.pi["v"]
    res = {d: [0, 0, 0, 0] for d in doms}
    nr = m.ram.nr_frames
    for lo in range(0, nr, CHUNK):
        hi = min(nr, lo + CHUNK)
        owners = v[lo:hi].tolist()
        m2p = m.m2p[lo:hi].tolist()
        a = acc.accessed[lo:hi].tolist()
        w = acc.written[lo:hi].tolist()
        win = acc.window[lo:hi].tolist()
        for i in range(hi - lo):
            d = owners[i] - 1
            if d not in res or m2p[i] == INVALID:
                continue
            r = res[d]
            r[0] += 1
            hw = (lo + i) in hw_a
            if a[i] or hw:
                r[1] += 1
            if w[i]:
                r[2] += 1
            if win[i] or hw:
                r[3] += 1
    return {d: tuple(r) for d, r in res.items()}


def _u(m) -> list[str]:
    out = Sink()
    scan_accessed_pages(m, out, ())
    return out


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="64G")
    ap.add_argument("--guests", type=int, default=5)
    ap.add_argument("--guest-mib", type=int, default=2064)
    ap.add_argument("--touch", type=int, default=100000, help="pages each guest touches")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--naive-repeat", type=int, default=3)
    return ap.parse_args()


@dataclass
class Figures:
    """What a run measured, for the report."""

    t_boot: float = 0.0
    t_create: float = 0.0
    t_touch: float = 0.0
    guest_pages: int = 0
    faults: int = 0
    sl1: int = 0
    lines: int = 0  # lines of the all-domain U
    report: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)  # U, all domains: wall, CPU
    cpu: list[float] = field(default_factory=list)
    one: list[float] = field(default_factory=list)  # U dN 0x100-LAST
    naive_wall: list[float] = field(default_factory=list)
    naive_cpu: list[float] = field(default_factory=list)
    z_times: list[float] = field(default_factory=list)  # U after Z, synthetic A bits
    z_cpu: list[float] = field(default_factory=list)


def _boot_and_touch(args: argparse.Namespace, f: Figures) -> tuple[Machine, list]:
    """Boot the host, create the guests and wait until each has touched its pages."""
    t = time.perf_counter()
    m = boot_sync(Machine(HostConfig(memory=parse_size(args.memory), cpus=2, dom0_mem=1 << 30)))
    f.t_boot = time.perf_counter() - t
    t = time.perf_counter()
    doms = []
    for i in range(args.guests):
        wl = f"touch:pages={args.touch},stride={args.stride},write={i % 2}"
        spec = DomainSpec(name=f"g{i}", memory=args.guest_mib, vcpus=1, workload=wl)
        doms.append(m.create_domain(spec))
    f.t_create = time.perf_counter() - t
    t = time.perf_counter()
    want = f"touch done {args.touch}"
    while not all(want in d.hvm.console.lines for d in doms):
        if time.perf_counter() - t > 900:
            raise SystemExit("guests did not finish touching in 900 s")
        time.sleep(0.2)
    f.t_touch = time.perf_counter() - t
    f.guest_pages = sum(d.tot_pages for d in doms)
    f.faults = m.perfc.total("shadow_fault")
    f.sl1 = sum(int(d.paging.shadow_l1_mfns().size) for d in doms)
    return m, doms


def _time_u(m, doms: list, args: argparse.Namespace, f: Figures) -> None:
    """The handler, cold (first touch of the record's pages by a scan) then warm; then one
    domain, a range (what `xl debug-keys U dN 0x100-LAST` does)."""
    for _ in range(args.repeat):
        out = Sink()
        c = time.process_time()  # this process's CPU time: less noisy on a shared machine
        t = time.perf_counter()
        scan_accessed_pages(m, out, ())
        f.times.append(time.perf_counter() - t)
        f.cpu.append(time.process_time() - c)
    f.lines = len(out)
    f.report = parse_report("\n".join("(XEN) " + x for x in out))
    for _ in range(args.repeat):
        t = time.perf_counter()
        scan_accessed_pages(m, Sink(), (f"d{doms[0].domid}", f"0x100-{len(doms[0].p2m) - 1:#x}"))
        f.one.append(time.perf_counter() - t)


def _time_naive(m, doms: list, args: argparse.Namespace, f: Figures) -> None:
    """The per-page Python loop, which must count what `U` reported."""
    for _ in range(args.naive_repeat):
        c = time.process_time()
        t = time.perf_counter()
        naive = naive_counts(m)
        f.naive_wall.append(time.perf_counter() - t)
        f.naive_cpu.append(time.process_time() - c)
    for d in doms:
        r = f.report[d.domid]
        got = (r["pages"], r["accessed"], r["dirty"], r["window"])
        assert got == naive[d.domid], (d.domid, got, naive[d.domid])
        s = scan_domain(m, d)
        # + the guest kernel's own pages: start-info (gfn 0), text (1-3), the XenStore ring
        # (0xc), shared_info (0xe), the hypercall page (0xf), the stack (0x10)
        assert s.nr_accessed == args.touch + 8


def _time_u_after_z(m, doms: list, args: argparse.Namespace, f: Figures) -> None:
    """After `Z` (real handler), the worst case for the scan: every present shadow L1 entry
    gets its A bit back. SYNTHETIC: set here with numpy, as the MMU would if each guest
    re-read all its pages; then every window bit comes from the shadow entries via the M2P."""
    from keyhandlers.access import reset_accessed_window

    reset_accessed_window(m, Sink(), ())
    after_z = parse_report("\n".join("(XEN) " + x for x in _u(m)))
    u64 = m.ram.u64.reshape(-1, 512)
    for d in doms:
        l1 = d.paging.shadow_l1_mfns().astype(np.intp)
        rows = u64[l1]
        rows[(rows & np.uint64(1)) != 0] |= np.uint64(0x20)
        u64[l1] = rows
    for _ in range(args.repeat):
        c = time.process_time()
        t = time.perf_counter()
        out_z = _u(m)
        f.z_times.append(time.perf_counter() - t)
        f.z_cpu.append(time.process_time() - c)
    rz = parse_report("\n".join("(XEN) " + x for x in out_z))
    for d in doms:
        assert after_z[d.domid]["window"] == 0
        assert rz[d.domid]["window"] == rz[d.domid]["accessed"] == args.touch + 8


def _print_report(m, doms: list, args: argparse.Namespace, f: Figures) -> None:
    times, cpu, z_times, z_cpu = f.times, f.cpu, f.z_times, f.z_cpu
    best, med = min(times), statistics.median(times)
    print(
        f"bench_scan: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"host {args.memory} ({m.ram.nr_frames} frames): boot {f.t_boot:.2f} s")
    print(
        f"{args.guests} guests x {args.guest_mib} MiB = {f.guest_pages} pages "
        f"({f.guest_pages / 262144:.2f} GiB), created in {f.t_create:.2f} s"
    )
    print(
        f"real touch workloads: {args.touch} pages each, stride {args.stride}, "
        f"read/write alternating: {f.faults} shadow faults in {f.t_touch:.1f} s, "
        f"{f.sl1} shadow L1 tables in use"
    )
    for d in doms:
        r = f.report[d.domid]
        print(
            f"  d{d.domid} pages={r['pages']} accessed={r['accessed']} dirty={r['dirty']} "
            f"window={r['window']} never={r['never']}"
        )
    print(
        f"U (all {args.guests} guests, {f.lines} lines): first {times[0] * 1e3:.1f} ms, "
        f"best {best * 1e3:.1f} ms, median {med * 1e3:.1f} ms of {args.repeat}"
    )
    print(
        f"U CPU time (process): best {min(cpu) * 1e3:.1f} ms, "
        f"median {statistics.median(cpu) * 1e3:.1f} ms; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"U after Z with every present shadow L1 entry's A bit set again (synthetic A bits, "
        f"window from the shadows): best {min(z_times) * 1e3:.1f} ms, "
        f"median {statistics.median(z_times) * 1e3:.1f} ms; CPU best {min(z_cpu) * 1e3:.1f} ms, "
        f"median {statistics.median(z_cpu) * 1e3:.1f} ms"
    )
    print(
        f"U d{doms[0].domid} 0x100-LAST: best {min(f.one) * 1e3:.1f} ms, "
        f"median {statistics.median(f.one) * 1e3:.1f} ms"
    )
    nb, nm = min(f.naive_wall), statistics.median(f.naive_wall)
    cm = statistics.median(cpu)
    print(
        f"naive per-page Python loop over the frame table ({m.ram.nr_frames} frames) and "
        f"{f.sl1 * 512} shadow L1 entries, {args.naive_repeat} runs: best {nb:.2f} s, "
        f"median {nm:.2f} s, CPU median {statistics.median(f.naive_cpu):.2f} s; same counts"
    )
    print(
        f"speed-up: {nb / best:.0f}x (best vs best), {nm / med:.0f}x (median vs median), "
        f"{statistics.median(f.naive_cpu) / cm:.0f}x (CPU time, medians), "
        f"{nm / times[0]:.0f}x (naive median vs the first, cold U)"
    )
    print(f"scan rate: {f.guest_pages / best / 1e6:.0f} M guest pages/s; RSS {rss_mb():.0f} MiB")


def main() -> None:
    args = _parse_args()
    f = Figures()
    m, doms = _boot_and_touch(args, f)
    _time_u(m, doms, args, f)
    _time_naive(m, doms, args, f)
    _time_u_after_z(m, doms, args, f)
    _print_report(m, doms, args, f)
    m.shutdown()


if __name__ == "__main__":
    main()
