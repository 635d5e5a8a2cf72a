"""The native block hook that ends slices (emu/cpu/blockhook.py) and the slices it makes.

The machine code is checked byte for byte against its disassembly; in a bare Unicorn it
ends a run at a block boundary only when the flag is set, even inside `jmp $`; where the
executable mapping is refused there is one warning line and counted slices. Through the
scheduler, thousands of slices ended by the flag leave a guest's `add [mem],1` count exact.
"""

from __future__ import annotations

import ctypes
import threading
import time

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from guest_helpers import REPORT_EQUAL, asm_guest, console_lines, new_machine, wait_for
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from emu.asm import assemble
from emu.cpu import blockhook, sched


def _dis(code: bytes) -> list[str]:
    return [f"{i.mnemonic} {i.op_str}".strip() for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, 0)]


def test_hook_bytes_are_what_the_docstring_says():
    stop = 0x7F0011223344
    code = blockhook.stop_hook_code(stop)
    assert len(code) == 25
    assert _dis(code) == [
        "cmp byte ptr [rcx], 0",
        "jne 6",
        "ret",
        "mov byte ptr [rcx], 0",
        "mov byte ptr [rcx + 1], 1",
        f"movabs rax, {stop:#x}",
        "jmp rax",
    ]
    assert (
        blockhook.uc_emu_stop_address()
        == ctypes.cast(blockhook._uclib.uc_emu_stop, ctypes.c_void_p).value
    )


def _bare(src: str, rcx: int = 0) -> tuple[Uc, blockhook.SliceFlag, int]:
    code = assemble(src, 0x1000, 0x1000)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    uc.reg_write(X.UC_X86_REG_RCX, rcx)
    flag = blockhook.SliceFlag()
    assert blockhook.install(uc, flag)
    return uc, flag, 0x1000 + len(code)


@pytest.mark.timeout(60)
def test_flag_ends_runs_exactly_at_block_boundaries():
    n = 3_000_000
    uc, flag, end = _bare("lp: add qword ptr [0x2000], 1\ndec rcx\njnz lp\nhlt", n)
    done = threading.Event()

    def kicker() -> None:
        while not done.is_set():
            time.sleep(0.0002)
            flag.kick = True

    threading.Thread(target=kicker, daemon=True).start()
    rip, stops = 0x1000, 0
    while rip != end:
        uc.emu_start(rip, end)
        stops += flag.take_stopped()
        rip = uc.reg_read(X.UC_X86_REG_RIP)
    done.set()
    assert int.from_bytes(uc.mem_read(0x2000, 8), "little") == n
    assert stops > 10


@pytest.mark.timeout(60)
def test_jmp_self_answers_the_flag_and_nothing_else_stops_it():
    uc, flag, _ = _bare("lp: jmp lp")
    threading.Timer(0.05, lambda: setattr(flag, "kick", True)).start()
    uc.emu_start(0x1000, 1 << 63)  # returns only because the hook stopped it
    assert flag.take_stopped() and not flag.kick
    assert uc.reg_read(X.UC_X86_REG_RIP) == 0x1000
    # With no flag set, the hook never stops a run: it ends at `until`.
    uc2, flag2, end = _bare("lp: dec rcx\njnz lp", 1_000_000)
    uc2.emu_start(0x1000, end)
    assert uc2.reg_read(X.UC_X86_REG_RCX) == 0 and not flag2.take_stopped()


def test_refused_mapping_warns_once_and_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(blockhook, "_state", {})
    calls = []

    def refuse(addr: int, size: int, prot: int) -> int:
        calls.append((size, prot))
        return -1

    assert blockhook.stop_hook(mprotect=refuse) is None
    assert blockhook.stop_hook(mprotect=refuse) is None  # decided once
    assert calls == [(4096, blockhook.PROT_READ | blockhook.PROT_EXEC)]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "xenconsole: warning: native slice hook unavailable (mprotect(PROT_EXEC) refused"
    )
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    assert blockhook.install(uc, blockhook.SliceFlag()) is False


def test_vcpus_without_the_native_hook_run_counted_slices(monkeypatch, tmp_path):
    monkeypatch.setattr(blockhook, "_state", {"addr": None})
    m = new_machine()
    try:
        dom = asm_guest(m, tmp_path, "c", COUNTER.format(n=300_000))
        assert wait_for(lambda: console_lines(dom) == ["ok"], timeout=60), console_lines(dom)
        v = dom.vcpus[0]
        assert v.native is False and v.stats["counted_runs"] == v.stats["runs"]
    finally:
        m.shutdown()


COUNTER = (
    """
    mov rcx, {n}
lp:
    add qword ptr [0x100000], 1
    dec rcx
    jnz lp
    mov rax, qword ptr [0x100000]
    mov rbx, {n}
"""
    + REPORT_EQUAL
)
SPIN = "spin:\n    add qword ptr [0x100000], 1\n    jmp spin\n"


# Adds until the host sets the stop byte at 0x101000; r15 counts the loop's iterations in a
# register (exact across slices), so a store that ran twice makes [0x100000] > r15.
UNTIL_STOPPED = (
    """
    xor r15, r15
lp:
    add qword ptr [0x100000], 1
    inc r15
    cmp byte ptr [0x101000], 0
    je lp
    mov rax, qword ptr [0x100000]
    mov rbx, r15
"""
    + REPORT_EQUAL
)


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
@pytest.mark.timeout(300)
def test_thousands_of_flag_ended_slices_stay_exact(monkeypatch, tmp_path):
    # 0.2 ms slices: two domains on two pCPUs; the counter runs until its run has been ended
    # by its flag 3,000+ times (however loaded the machine), then every add must have
    # landed exactly once.
    monkeypatch.setattr(sched, "SLICE_NS", 200_000)
    m = new_machine()
    try:
        assert m.sched.nr_threads == 2
        spin = asm_guest(m, tmp_path, "spin", SPIN)
        dom = asm_guest(m, tmp_path, "count", UNTIL_STOPPED)
        v = dom.vcpus[0]
        assert wait_for(lambda: v.stats["hook_stops"] >= 3000, timeout=250), v.stats
        m.ram.write(int(dom.p2m[0x101]) << 12, b"\x01")
        assert wait_for(lambda: console_lines(dom), timeout=30), "counter never stopped"
        assert console_lines(dom) == ["ok"]
        assert v.native and v.stats["counted_runs"] == 0
        assert spin.vcpus[0].stats["hook_stops"] > 0
    finally:
        m.shutdown()


@pytest.mark.timeout(120)
def test_jmp_self_guest_is_paused_quiesced_and_destroyed(tmp_path):
    m = new_machine()
    try:
        dom = asm_guest(m, tmp_path, "loop", "lp:\n    jmp lp\n")
        v = dom.vcpus[0]
        assert wait_for(lambda: v.stats["hook_stops"] >= 3, timeout=60)
        m.sched.pause_domain(dom)
        assert not v.running
        m.sched.unpause_domain(dom)
        assert wait_for(lambda: v.running, timeout=10)
        with m.sched.quiesce(dom):
            assert not v.running
            rip = v.reg("rip")
        with m.sched.quiesce(dom):  # stopped at `jmp lp`, the one block: same RIP each time
            assert v.reg("rip") == rip
        m.destroy_domain(dom)
        assert dom not in m.domains.values()
    finally:
        m.shutdown()
