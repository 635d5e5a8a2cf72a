"""Create/destroy cycles of small guests, measured: the soak of issue 15 (acceptance).

Shared by tests/emu/test_soak.py (a short run in CI) and bench/bench_soak.py (2,000 cycles).
Each cycle creates one small guest with the next workload of `WORKLOADS` (some of them
crash by themselves within milliseconds: a triple fault is SHUTDOWN_reboot, and the
config's `on_reboot = "destroy"` destroys them), lets it run a moment, and destroys it if
it is still there;
every `keys_every` cycles `S` and `Z` are pressed (they walk the domains while crashing
guests are torn down). The process's RSS, open fds and threads are sampled as it goes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from emu.audit import audit
from emu.boot import boot_sync
from emu.domctl import DomainError
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine

# name, workload, source of an asm: workload (or None)
WORKLOADS: list[tuple[str, str, str | None]] = [
    ("idle", "idle", None),
    ("touch", "touch:pages=256,write=1", None),
    ("random", "random:ws=128,write=1", None),
    ("stream", "stream:pages=64", None),
    ("crash", "asm", "ud2\n"),  # triple fault at once: no IDT
    ("spin-crash", "asm", "mov rcx, 200000\nspin: dec rcx\njnz spin\nud2\n"),
    ("touch2", "touch:pages=64", None),
]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class SoakResult:
    cycles: int = 0
    crashed: int = 0  # guests gone before the destroy (crashed)
    samples: list[tuple[int, float]] = field(default_factory=list)  # (cycle, RSS MB)
    fds: list[tuple[int, int]] = field(default_factory=list)
    threads: list[tuple[int, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    domains_left: int = 0


def soak(
    cycles: int,
    workdir: Path,
    sample_every: int = 50,
    keys_every: int = 10,
    run_s: float = 0.004,
    memory_mb: int = 2,
) -> SoakResult:
    """Run `cycles` create/destroy cycles on a fresh machine; figures in a SoakResult."""
    from keyhandlers import load_builtin
    from keyhandlers.dispatch import handle_keypress

    load_builtin()
    sources = {}
    for name, _kind, src in WORKLOADS:
        if src is not None:
            path = workdir / f"{name}.S"
            path.write_text(src)
            sources[name] = f"asm:{path}"
    m = boot_sync(Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=64 << 20)))
    m.console.sinks.append(lambda data: None)
    res = SoakResult()
    t0 = time.monotonic()
    try:
        for n in range(1, cycles + 1):
            name, kind, _src = WORKLOADS[n % len(WORKLOADS)]
            spec = DomainSpec(
                name=f"soak{n}",
                memory=memory_mb,
                vcpus=1 + n % 2,
                workload=sources.get(name, kind),
                on_reboot="destroy",  # a triple fault is SHUTDOWN_reboot: no restart loop
            )
            dom = m.create_domain(spec)
            time.sleep(run_s)
            try:
                m.destroy_domain(dom)
            except DomainError:
                res.crashed += 1  # it crashed and was destroyed meanwhile
            del dom
            if keys_every and n % keys_every == 0:
                handle_keypress(m, "S")
                handle_keypress(m, "Z")
            if n % sample_every == 0:
                # Crashes finish on their pCPU's thread; let the last one leave.
                deadline = time.monotonic() + 5
                while len(m.domains) > 1 and time.monotonic() < deadline:
                    time.sleep(0.005)
                res.samples.append((n, rss_mb()))
                res.fds.append((n, open_fds()))
                res.threads.append((n, threading.active_count()))
            res.cycles = n
        res.domains_left = len(m.domains) - 1
        res.violations = audit(m)
    finally:
        res.seconds = time.monotonic() - t0
        m.shutdown()
    return res
