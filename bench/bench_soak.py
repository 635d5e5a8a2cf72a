"""Soak: create/destroy cycles of small guests (mixed workloads, some crashing), measured.

Issue 15's acceptance: after 2,000 cycles the server process's RSS is within 50 MB of its RSS
after the first 100 cycles, open fds are unchanged, and the audit is clean. The cycles are
tests/soak_cycles.py's (the CI test tests/emu/test_soak.py runs 200 of them); `S` and `Z` are
pressed every 10 cycles. `--no-gc` runs with the cyclic garbage collector off, to show that
reference counting alone gives everything back.

    .venv/bin/python bench/bench_soak.py [--cycles 2000] [--no-gc]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))

from soak_cycles import open_fds, rss_mb, soak  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--no-gc", action="store_true", help="cyclic garbage collector off")
    args = ap.parse_args()
    if args.no_gc:
        gc.disable()
    fds0, rss0 = open_fds(), rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        r = soak(args.cycles, Path(tmp), sample_every=100)
    at100 = r.samples[0][1]
    end = r.samples[-1][1]
    print(
        f"cycles {r.cycles} in {r.seconds:.1f} s ({r.crashed} guests crashed first)"
        f"{'  [gc off]' if args.no_gc else ''}"
    )
    print(
        f"RSS MB: start {rss0:.1f}  after 100 cycles {at100:.1f}  after {r.cycles} {end:.1f}"
        f"  (delta {end - at100:+.1f}; max {max(mb for _, mb in r.samples):.1f})"
    )
    print("RSS every 100 cycles: " + " ".join(f"{mb:.0f}" for _, mb in r.samples))
    fds = sorted({n for _, n in r.fds})
    print(f"fds: before {fds0}, during {fds}, after shutdown {open_fds()}")
    print(f"threads during: {sorted({n for _, n in r.threads})}")
    print(
        f"audit: {'clean' if not r.violations else r.violations[:5]}; domains left {r.domains_left}"
    )
    ok = end - at100 <= 50 and len(fds) == 1 and not r.violations and not r.domains_left
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
