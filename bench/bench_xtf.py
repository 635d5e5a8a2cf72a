"""XTF's pv64 suite on one emulated host, one test after another (issue 10).

Builds the microkernels with ../shared/xtf-build.sh (or uses --xtf DIR, a tree it built),
then for every `test-pv64-*.cfg` (each test and each variation) does what `xl create FILE`
does, waits for the domain to go, and prints `test | verdict | seconds` (create to the
domain's end), the test's last line for anything but SUCCESS, and whether the machine audit
is clean after each test. Verdicts: the test's own `Test result:` line, CRASH (the domain
crashed first), HANG (no end within --timeout; the domain is destroyed).

    .venv/bin/python bench/bench_xtf.py [--xtf DIR] [--timeout 30] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emu.audit import audit  # noqa: E402
from emu.boot import boot_sync  # noqa: E402
from emu.host import HostConfig  # noqa: E402
from emu.machine import Machine  # noqa: E402
from xenconsole.dom0.xl_domain import parse_config, spec_from_config  # noqa: E402

RESULT = re.compile(r"^\(d(\d+)\) Test result: (.*)$", re.M)


def build(dest: Path) -> None:
    script = ROOT.parent / "shared" / "xtf-build.sh"
    if not script.is_file():
        sys.exit(f"no {script}: pass --xtf DIR with a built XTF tree")
    subprocess.run([str(script), str(dest)], check=True, capture_output=True)


def run_one(m: Machine, out: list[str], cfg_path: Path, timeout: float):
    spec = spec_from_config(parse_config(cfg_path.read_text(), str(cfg_path)))
    out.clear()
    t0 = time.monotonic()
    dom = m.create_domain(spec)
    while dom.domid in m.domains and time.monotonic() - t0 < timeout:
        time.sleep(0.005)
    dt = time.monotonic() - t0
    text = "".join(out).replace("\r\n", "\n")
    mine = [ln for ln in text.split("\n") if ln.startswith(f"(d{dom.domid}) ")]
    found = [v for d, v in RESULT.findall(text) if int(d) == dom.domid]
    if dom.domid in m.domains:
        m.destroy_domain(dom)
        verdict = "HANG"
    elif found:
        verdict = found[-1]
    else:
        verdict = "CRASH"
    last = next((ln for ln in reversed(mine) if "Test result" not in ln and "****" not in ln), "")
    return spec.name, verdict, dt, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xtf", type=Path, help="a tree built by xtf-build.sh")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    tmp = None
    if args.xtf is None:
        tmp = tempfile.TemporaryDirectory(prefix="xtf-")
        args.xtf = Path(tmp.name)
        t = time.monotonic()
        build(args.xtf)
        print(f"built XTF in {time.monotonic() - t:.1f} s")
    cfgs = sorted(args.xtf.glob("tests/*/test-pv64-*.cfg"))
    if args.only:
        cfgs = [c for c in cfgs if any(o in c.name for o in args.only)]
    m = boot_sync(Machine(HostConfig(memory=2 << 30, cpus=2, dom0_mem=256 << 20)))
    out: list[str] = []
    m.console.sinks.append(lambda b: out.append(b.decode("latin-1")))
    counts: dict[str, int] = {}
    times = []
    wall = time.monotonic()
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    print(f"{'test':34} | {'verdict':22} | seconds | audit")
    try:
        for cfg in cfgs:
            name, verdict, dt, last = run_one(m, out, cfg, args.timeout)
            problems = audit(m)
            counts[verdict.split()[0]] = counts.get(verdict.split()[0], 0) + 1
            times.append(dt)
            note = "" if verdict == "SUCCESS" else f"   <- {last[:100]}"
            ok = "clean" if not problems else problems[0]
            print(f"{name:34} | {verdict:22} | {dt:7.3f} | {ok}{note}", flush=True)
    finally:
        m.shutdown()
    total = time.monotonic() - wall
    times.sort()
    med = times[len(times) // 2] if times else 0.0
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(times)} instances: {summary}; median {med:.3f} s, total {total:.1f} s")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1/5/15 min): {load}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
