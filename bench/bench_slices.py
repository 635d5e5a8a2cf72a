"""How guest time slices end: a cross-thread `emu_stop()` repeats stores; the native hook doesn't.

A bare Unicorn runs `add qword [mem], 1` N times in a loop (paging off, one vCPU). Variant 1
ends slices the way a naive timer thread would, with `emu_stop()` from another thread every
`--stop-us` microseconds, and resumes at the saved RIP; variant 2 ends them with
`emu_start(count=SLICE_INSNS)` (the vCPUs' fallback where the native hook is refused);
variant 3 is what the vCPUs do: a timer thread sets a flag every `--stop-us` microseconds and
the native block hook (emu/cpu/blockhook.py) stops the run on the vCPU's own thread. Prints the
final memory value against N (extra adds = stores that ran twice), the slices, and the
instruction rate of each variant.

    .venv/bin/python bench/bench_slices.py [--n 30000000] [--stop-us 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from emu.asm import assemble  # noqa: E402
from emu.cpu import blockhook  # noqa: E402
from emu.cpu.vcpu import SLICE_INSNS  # noqa: E402

CODE, DATA = 0x1000, 0x2000
SOURCE = "lp: add qword ptr [0x2000], 1\ndec rcx\njnz lp\nhlt"


def make_uc(n: int) -> tuple[Uc, int]:
    code = assemble(SOURCE, CODE, 0x1000)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_map(DATA, 0x1000)
    uc.mem_write(CODE, code)
    uc.reg_write(X.UC_X86_REG_RCX, n)
    return uc, CODE + len(code)


def run(n: int, stop_us: float | None, native: bool = False) -> tuple[int, int, float]:
    """(final memory value, slices, seconds): timer stops (a flag for the native hook if
    `native`) if stop_us, else counted slices."""
    uc, end = make_uc(n)
    stop = threading.Event()
    flag = blockhook.SliceFlag()
    if native:
        assert blockhook.install(uc, flag), "no native hook on this host"

    def kicker() -> None:
        while not stop.is_set():
            time.sleep(stop_us / 1e6)
            if native:
                flag.kick = True
            else:
                uc.emu_stop()

    count = 0
    if stop_us is None:
        uc.ctl_flush_tb()
        count = SLICE_INSNS
    else:
        threading.Thread(target=kicker, daemon=True).start()
    rip, slices = CODE, 0
    t = time.perf_counter()
    while rip != end:
        uc.emu_start(rip, 1 << 63, count=count)
        slices += 1
        rip = uc.reg_read(X.UC_X86_REG_RIP)
    dt = time.perf_counter() - t
    stop.set()
    return int.from_bytes(uc.mem_read(DATA, 8), "little"), slices, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30_000_000)
    ap.add_argument("--stop-us", type=float, default=300.0)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}; {a.n:,} x `add qword [mem], 1`")
    variants = (
        (f"emu_stop() every {a.stop_us:g} us", a.stop_us, False),
        (f"count={SLICE_INSNS:,} slices", None, False),
        (f"native hook, flag every {a.stop_us:g} us", a.stop_us, True),
    )
    for label, stop_us, native in variants:
        val, slices, dt = run(a.n, stop_us, native)
        print(
            f"  {label:<34} memory {val:,} ({val - a.n:+,} vs N) in {slices:,} slices, "
            f"{3 * a.n / dt / 1e6:.0f} M instr/s"
        )


if __name__ == "__main__":
    main()
