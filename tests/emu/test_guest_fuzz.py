"""Fuzz: hundreds of random-byte guest programs each crash or run; the machine survives,
the memory audit stays clean, every frame comes back, and a normal guest still works."""

from __future__ import annotations

import random
import time

import pytest
from guest_helpers import console_lines, create, gone, new_machine, wait_for

from emu.audit import audit
from emu.domctl import DomainError

PROGRAMS = 300
BATCH = 12
RUN_S = 0.25
SEED = 0x5EED

# Encodings the hypervisor must handle: privileged, port I/O, syscall, traps, segment loads.
SPICE = [
    b"\x0f\x22\xd8",  # mov cr3, rax
    b"\x0f\x20\xd8",  # mov rax, cr3
    b"\x0f\x22\xc0",  # mov cr0, rax
    b"\x0f\x30",  # wrmsr
    b"\x0f\x32",  # rdmsr
    b"\x0f\x01\x10",  # lgdt [rax]
    b"\x0f\x01\x18",  # lidt [rax]
    b"\x0f\x01\x38",  # invlpg [rax]
    b"\xfa",  # cli
    b"\xfb",  # sti
    b"\xf4",  # hlt
    b"\x0f\x05",  # syscall
    b"\x0f\x01\xc1",  # vmcall (a hypercall, whatever rax holds)
    b"\xe6\xe9",  # out 0xe9, al
    b"\xe4\x80",  # in al, 0x80
    b"\xcc",  # int3
    b"\xcd\x80",  # int 0x80
    b"\x8e\xd8",  # mov ds, ax
    b"\x48\xcf",  # iretq
    b"\x0f\x0b",  # ud2
    b"\x48\x89\x00",  # mov [rax], rax
    b"\x48\xb8\x00\x00\x04\x00\x00\x00\x00\x00",  # mov rax, 0x40000 (its own L4)
    b"\x48\xb8\x00\x00\x00\x40\x00\x00\x00\x00",  # mov rax, 0x40000000 (beyond its memory)
]


def program(rng: random.Random) -> bytes:
    n = rng.randrange(16, 256)
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(n))
    out = bytearray()
    while len(out) < n:
        out += rng.choice(SPICE) if rng.random() < 0.6 else bytes([rng.randrange(256)])
    return bytes(out)


def to_asm(code: bytes) -> str:
    return "\n".join(
        "    .byte " + ", ".join(str(b) for b in code[i : i + 16]) for i in range(0, len(code), 16)
    )


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
@pytest.mark.timeout(180)
def test_random_programs_crash_or_run(tmp_path):
    m = new_machine(memory=512 << 20)
    try:
        rng = random.Random(SEED)
        assert m.hvm.xen is not None  # Xen's trampoline frames, allocated once per machine
        free0 = m.heap.total_avail_pages
        crashed = survived = 0
        for b in range(0, PROGRAMS, BATCH):
            doms = []
            for i in range(b, min(b + BATCH, PROGRAMS)):
                p = tmp_path / f"f{i}.S"
                p.write_text(to_asm(program(rng)) + "\n")
                doms.append(create(m, f"fuzz{i}", f"asm:{p}", memory=4, on_reboot="destroy"))
            time.sleep(RUN_S)
            for d in doms:
                if gone(m, d):
                    crashed += 1
                    continue
                survived += 1
                try:
                    m.destroy_domain(d)
                except DomainError:  # crashed between the check and the destroy
                    pass
            assert wait_for(lambda batch=doms: all(gone(m, d) for d in batch))
            assert audit(m) == [], f"audit after batch {b // BATCH}"
        assert crashed + survived == PROGRAMS
        causes = m.hvm.crash_counts
        assert causes.get("internal", 0) == 0, causes  # never a hypervisor exception
        assert crashed > PROGRAMS // 4 and survived > 0
        assert m.heap.total_avail_pages == free0
        # the machine still runs ordinary guests
        d = create(m, "after", "touch:pages=64,write=1", memory=4)
        assert wait_for(lambda: "touch done 64" in console_lines(d))
        print(f"fuzz: {crashed} crashed ({causes}), {survived} ran until destroyed")
    finally:
        m.shutdown()
