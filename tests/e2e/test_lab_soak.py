"""The lab server's soak (bench/bench_soak_lab.py) for 60 s: 3 hosts in one server, 20
clients attaching, typing and detaching, one stalled spectator, guests printing numbered
lines. Every session's transcript complete, every command answered, no fd growth, no
traceback. (The 30-minute run and its RSS figure: BENCHMARKS.md.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_soak_lab.py"


@pytest.mark.timeout(400)
def test_lab_soak_60_seconds() -> None:
    spec = importlib.util.spec_from_file_location("bench_soak_lab", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    r = mod.soak(60.0, clients=20, report=lambda line: None)
    print({k: v for k, v in r.items() if k != "stderr"})
    assert r["gaps"] == [] and r["errors"] == [], (r["gaps"][:5], r["errors"][:5])
    assert r["tracebacks"] == 0, r["stderr"][-3000:]
    assert r["exit"] == 0
    assert r["sessions"] > 20 and r["commands"] >= r["sessions"] and r["seq_lines"] > 0
    assert r["fd1"] <= r["fd0"]
    assert all(n > 0 for n in r["logged_seq"].values())
