"""PV hypercall rate: a tight `xen_version` loop in a PV guest against the raw Unicorn
`syscall`-hook round trip in the same process (issue 10 acceptance 5).

Guest: a minimal PV kernel (emu/pv/elf.py write_pv_elf) calling XENVER_version through its
hypercall page N times, then SCHEDOP_shutdown; the rate is N over the time between two runs
(N and 0 calls), so building and tearing down the domain cancel out. Raw: a bare Uc at CPL 0
running `mov eax, 17; syscall; dec rcx; jnz` with a syscall hook that reads rax and writes
it back (the least a hypercall does).

    .venv/bin/python bench/bench_pv_hypercall.py [--n 200000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keystone import KS_ARCH_X86, KS_MODE_64, Ks  # noqa: E402
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from emu.boot import boot_sync  # noqa: E402
from emu.host import DomainSpec, HostConfig  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.pv.elf import write_pv_elf  # noqa: E402

HC = 0x101000


def guest_source(n: int) -> str:
    return f"""
        mov r12, {n}
        test r12, r12
        jz done
    again:
        xor edi, edi
        xor esi, esi
        mov rax, {HC + 32 * 17}
        call rax
        dec r12
        jnz again
    done:
        sub rsp, 16
        mov dword ptr [rsp], 0
        mov rdi, 2
        mov rsi, rsp
        mov rax, {HC + 32 * 29}
        call rax
    """


def run_guest(m: Machine, path: str, name: str) -> float:
    t0 = time.perf_counter()
    d = m.create_domain(DomainSpec(name=name, memory=32, type="pv", kernel=path))
    while d.domid in m.domains:
        time.sleep(0.0005)
    return time.perf_counter() - t0


def pv_rate(n: int) -> float:
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    m = boot_sync(Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20)))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for k in (0, n):
                p = Path(tmp) / f"loop{k}"
                p.write_bytes(write_pv_elf(bytes(ks.asm(guest_source(k), 0x100000)[0])))
                paths[k] = str(p)
            best0 = min(run_guest(m, paths[0], f"z{i}") for i in range(3))
            best = min(run_guest(m, paths[n], f"n{i}") for i in range(3))
    finally:
        m.shutdown()
    return n / (best - best0)


def raw_rate(n: int) -> float:
    code = bytes(
        Ks(KS_ARCH_X86, KS_MODE_64).asm("l: mov eax, 17\nsyscall\ndec rcx\njnz l", 0x1000)[0]
    )
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)

    def hook(uc, _ud):
        uc.reg_write(X.UC_X86_REG_RAX, uc.reg_read(X.UC_X86_REG_RAX))

    uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, X.UC_X86_INS_SYSCALL)
    best = None
    for _ in range(3):
        uc.reg_write(X.UC_X86_REG_RCX, n)
        t0 = time.perf_counter()
        uc.emu_start(0x1000, 0x1000 + len(code))
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    raw = raw_rate(args.n)
    pv = pv_rate(args.n)
    print(f"raw Unicorn syscall hook round trip: {raw:,.0f} /s")
    print(f"PV xen_version hypercalls:           {pv:,.0f} /s  ({pv / raw:.2f} of raw)")


if __name__ == "__main__":
    main()
