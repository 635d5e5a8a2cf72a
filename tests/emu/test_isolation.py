"""Isolation: `asm:` guests that try to escape reach nothing outside their own frames.

Each attacker runs next to an idle victim domain. Afterwards the victim's memory, its
access record, Xen's frames (the entry trampoline and its tables, the Xen image) and the
access record of every frame the attacker does not own are exactly as before.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from guest_helpers import PUTS, asm_guest, console_lines, create, gone, wait_for

from emu.audit import audit

pytestmark = [pytest.mark.timeout(90), pytest.mark.machine(shared=True)]

# A #PF (14) and #GP (13) handler that count in r12 and skip r13 bytes.
IDT = """
    mov rax, 0x300000
    lea rbx, [rip + handler_ec]
    mov r8, 0xd0
    call set_gate
    mov r8, 0xe0
    call set_gate
    mov rcx, 0x301000
    mov word ptr [rcx], 0xfff
    mov qword ptr [rcx + 2], rax
    lidt [rcx]
    xor r12, r12
    jmp start
set_gate:
    mov rdx, rbx
    mov word ptr [rax + r8], dx
    mov word ptr [rax + r8 + 2], 0x23
    mov word ptr [rax + r8 + 4], 0xef00
    shr rdx, 16
    mov word ptr [rax + r8 + 6], dx
    shr rdx, 16
    mov dword ptr [rax + r8 + 8], edx
    ret
handler_ec:
    add qword ptr [rsp + 8], r13
    inc r12
    add rsp, 8
    iretq
start:
"""
REPORT = (
    """
    mov rax, r12
    call putdec
    sti
idle:
    hlt
    jmp idle
putdec:
    mov rbx, 10
    xor ecx, ecx
pd_div:
    xor edx, edx
    div rbx
    push rdx
    inc rcx
    test rax, rax
    jnz pd_div
pd_out:
    pop rax
    add al, 0x30
    out 0xe9, al
    dec rcx
    jnz pd_out
    mov al, 10
    out 0xe9, al
    ret
"""
    + PUTS
)

# Its own 4-level tables in its arena (gfns 0x200-0x203): code, stack and start info stay
# mapped; L1 slots 0x100.. point at guest frames it does not have (and machine-frame-like
# numbers of other domains). Load them, then read and write through them.
OWN_TABLES = """
    mov rdi, 0x200000
    lea rax, [rdi + 0x1003]
    mov qword ptr [rdi], rax
    lea rax, [rdi + 0x2003]
    mov qword ptr [rdi + 0x1000], rax
    lea rax, [rdi + 0x3003]
    mov qword ptr [rdi + 0x2000], rax
    mov qword ptr [rdi + 0x3000], 0x3
    mov qword ptr [rdi + 0x3000 + 0x11 * 8], 0x11003
    mov qword ptr [rdi + 0x3000 + 0x12 * 8], 0x12003
    mov qword ptr [rdi + 0x3000 + 0x20 * 8], 0x20003
    mov qword ptr [rdi + 0x3000 + 0x21 * 8], 0x21003
    mov qword ptr [rdi + 0x3000 + 0x300 * 8], 0x300003
    mov qword ptr [rdi + 0x3000 + 0x301 * 8], 0x301003
    mov rsi, 0x10000003
    mov rcx, 0x100
fill:
    mov qword ptr [rdi + 0x3000 + rcx * 8], rsi
    add rsi, 0x9000000
    inc rcx
    cmp rcx, 0x180
    jne fill
    mov cr3, rdi
    mov r13, 3
    mov rbx, 0x100000
probe:
    mov rax, qword ptr [rbx]
    mov qword ptr [rbx], rbx
    add rbx, 0x1000
    cmp rbx, 0x180000
    jne probe
"""

ATTACKS = {
    "own_tables": IDT + OWN_TABLES + REPORT,
    "cr3_outside": "    mov rax, 0x7fff000000\n    mov cr3, rax\n    hlt\n",
    "clear_pg": "    mov rax, cr0\n    btr rax, 31\n    mov cr0, rax\n    hlt\n",
    "efer": "    mov ecx, 0xc0000080\n    xor eax, eax\n    xor edx, edx\n    wrmsr\n    hlt\n",
    "lgdt": "    mov rax, 0x100000\n    lgdt [rax]\n    hlt\n",
    "sysret": "    sysretq\n",
    "guess_reads": IDT
    + """
    mov r13, 3
    mov rbx, 0x1000000
guess:
    mov rax, qword ptr [rbx]
    add rbx, 0x1000000
    mov rcx, 0x200000000
    cmp rbx, rcx
    jne guess
    mov rbx, 0xffff830000000000
    mov rax, qword ptr [rbx]
    mov rbx, 0xffff82d040000000
    mov rax, qword ptr [rbx]
"""
    + REPORT,
    "own_pte_write": IDT
    + """
    mov rdi, 0x40000
    mov rax, qword ptr [rdi]
    and rax, 0xfff
    mov rdi, 0x43000
    mov rbx, 0x7654321000
    or rbx, 7
    mov qword ptr [rdi + 0x180 * 8], rbx
    mov r13, 3
    mov rbx, 0x180000
    mov rax, qword ptr [rbx]
    mov qword ptr [rbx], rax
"""
    + REPORT,
    "ports": """
    mov dx, 0xcf8
    mov eax, 0x80000000
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    mov r14, rax
    mov al, 0x41
    out 0x80, al
    mov dx, 0x3f8
    out dx, al
    in al, 0x71
    mov dx, 0x1f0
    rep insb
    lea rsi, [rip + done]
    call puts
    mov r12, r14
"""
    + REPORT.replace("    mov rax, r12\n", "    mov rax, r12\n    and eax, 0xffffffff\n", 1)
    + 'done:\n    .asciz "io done\\n"\n',
    "hypercall_ptrs": """
    xor edi, edi
    mov esi, 64
    mov rdx, 0xffff830000000000
    call 0xf000 + 32 * 18
    mov r12, rax
    neg r12
    xor edi, edi
    mov esi, 64
    mov rdx, 0x7000000000
    call 0xf000 + 32 * 18
"""
    + REPORT,
}

# What each attacker ends with: None = it crashed, else its console lines.
EXPECT = {
    "own_tables": None,
    "cr3_outside": None,
    "clear_pg": None,
    "efer": None,
    "lgdt": None,
    "sysret": None,
    # gfn 0x1000 is RAM: the shared_info hole at gfn 0x0e moved the last page up one gfn
    "guess_reads": [str(0x1FF + 1)],
    "own_pte_write": None,
    "ports": ["io done", str(0xFFFFFFFF)],
    "hypercall_ptrs": ["14"],
}


def _state(m, victim, attacker_mfns):
    """Hashes of everything the attacker must not change."""
    ram = m.ram
    acc = m.access
    v_mfns = victim.p2m[victim.p2m != np.uint64(2**64 - 1)].astype(np.int64)
    h = hashlib.sha256()
    for mfn in v_mfns.tolist():
        h.update(ram.page(mfn).tobytes())
    xen = m.hvm.xen.snapshot(m)
    image = ram.read(0x200 << 12, 0x400 << 12)  # the Xen image frames
    others = np.ones(ram.nr_frames, dtype=bool)
    others[attacker_mfns] = False
    return (
        h.hexdigest(),
        acc.accessed[v_mfns].tobytes() + acc.written[v_mfns].tobytes(),
        hashlib.sha256(xen + image).hexdigest(),
        int(np.count_nonzero(acc.accessed[others])),
        int(np.count_nonzero(acc.written[others])),
    )


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_reaches_nothing(machine, tmp_path, name):
    m = machine
    victim = create(m, f"victim-{name}", "idle", memory=8)
    assert wait_for(lambda: victim.vcpus[0].blocked)
    path = tmp_path / f"{name}.S"
    path.write_text(ATTACKS[name])
    m.sched.pause_domain(victim)
    # The attacker's own frames are the only ones whose record may change.
    attacker = asm_guest(m, tmp_path, f"atk-{name}", ATTACKS[name], memory=16)
    amfns = attacker.p2m[attacker.p2m != np.uint64(2**64 - 1)].astype(np.int64)
    pool = attacker.paging.pool_mfns().astype(np.int64)
    mine = np.concatenate([amfns, pool])
    # state before: taken now (the attacker may have started; its own frames are excluded)
    with m.quiesce(attacker):
        before = _state(m, victim, mine)
    expect = EXPECT[name]
    if expect is None:
        assert wait_for(lambda: gone(m, attacker)), console_lines(attacker)
    else:
        assert wait_for(lambda: console_lines(attacker) == expect), console_lines(attacker)
    with m.quiesce(None):
        after = _state(m, victim, mine)
    assert after[0] == before[0], "victim memory changed"
    assert after[1] == before[1], "victim access record changed"
    assert after[2] == before[2], "Xen frames changed"
    assert after[3:] == before[3:], "frames outside the attacker were touched"
    assert m.hvm.crash_counts.get("internal", 0) == 0
    if not gone(m, attacker):
        m.destroy_domain(attacker)
    m.sched.unpause_domain(victim)
    m.destroy_domain(victim)
    assert audit(m) == []
