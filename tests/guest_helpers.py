"""Helpers for the guest tests: a machine without a console server, asm guests, waits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emu.boot import boot_sync
from emu.domain_build import guest_pte_flags
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine

PTE_A, PTE_D = np.uint64(0x20), np.uint64(0x40)


class Lines:
    """Everything the machine sent to its serial line, as text."""

    def __init__(self, machine) -> None:
        self.chunks: list[bytes] = []
        machine.console.sinks.append(self.chunks.append)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("latin-1").replace("\r\n", "\n")


def new_machine(memory: int = 512 << 20, cpus: int = 2) -> Machine:
    m = Machine(HostConfig(memory=memory, cpus=cpus, dom0_mem=64 << 20))
    return boot_sync(m)


def create(m, name: str, workload: str, memory: int = 16, vcpus: int = 1, paused=False):
    spec = DomainSpec(name=name, memory=memory, vcpus=vcpus, workload=workload)
    return m.create_domain(spec, paused=paused) if paused else m.create_domain(spec)


def asm_guest(m, tmp_path: Path, name: str, source: str, memory: int = 16, vcpus: int = 1):
    path = tmp_path / f"{name}.S"
    path.write_text(source)
    return create(m, name, f"asm:{path}", memory=memory, vcpus=vcpus)


def wait_for(pred, timeout: float = 10.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def console_lines(dom) -> list[str]:
    return list(dom.hvm.console.lines)


def arena_ad(m, dom, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """gfns in [first, last) whose guest PTE has A, and those with D."""
    gfns = np.arange(first, last)
    f = guest_pte_flags(m, dom, gfns)
    return gfns[(f & PTE_A) != 0], gfns[(f & PTE_D) != 0]


def gone(m, dom) -> bool:
    return m.domains.get(dom.domid) is not dom


# The console flood (tests/emu/test_flood.py, tests/e2e/test_flood_e2e.py): fill 16 KiB at
# 0x100000 with 'A', a newline every 128th byte, then write it with console_io forever.
FLOOD = """
    mov rdi, 0x100000
    mov rcx, 16384
    mov al, 0x41
    rep stosb
    mov rbx, 0x10007f
    mov rcx, 128
nl:
    mov byte ptr [rbx], 10
    add rbx, 128
    dec rcx
    jnz nl
flood:
    xor edi, edi
    mov esi, 16384
    mov rdx, 0x100000
    call 0xf000 + 32 * 18
    jmp flood
"""
# Port I/O forever: the debug port, port 0x80 and a CMOS read (each a Python hook).
PORT_FLOOD = """
    mov al, 0x42
flood:
    out 0xe9, al
    out 0x80, al
    in al, 0x71
    mov al, 0x42
    jmp flood
"""


# Port 0xe9 print of a NUL-terminated string at rsi; used by asm programs (append to source).
PUTS = """
puts:
    mov al, byte ptr [rsi]
    test al, al
    jz puts_done
    out 0xe9, al
    inc rsi
    jmp puts
puts_done:
    ret
"""


def say_then_idle(body: str, message: str) -> str:
    """An asm program: `body`, then print `message` on its own line, then idle forever."""
    return (
        body
        + f"""    lea rsi, [rip + say_msg]
    call puts
idle:
    sti
    hlt
    jmp idle
say_msg:
    .asciz "{message}\\n"
"""
        + PUTS
    )


# After a counting loop: prints `ok` if rax == rbx, else `N`, then goes offline (cli; hlt).
REPORT_EQUAL = """
    cmp rax, rbx
    jne bad
    mov al, 0x6f
    out 0xe9, al
    mov al, 0x6b
    out 0xe9, al
    jmp nl
bad:
    mov al, 0x4e
    out 0xe9, al
nl:
    mov al, 0x0a
    out 0xe9, al
    cli
    hlt
"""


class Out(list):
    """A key handler's `out`: collects the lines it prints (without the `(XEN) ` prefix)."""

    def __call__(self, line: str = "") -> None:
        self.append(line)


def run_key(fn, m, *args) -> list[str]:
    """Call a key handler function directly and return its lines."""
    out = Out()
    fn(m, out, tuple(args))
    return list(out)


def press(m, k: str) -> list[str]:
    """Run built-in key `k`'s handler without arguments and return its lines."""
    from keyhandlers import KEY_TABLE

    return run_key(KEY_TABLE[k].fn, m)
