"""vCPUs, privileged-instruction emulation, hypercalls, workloads and the scheduler, on a
machine without a console server (real Unicorn execution under the real shadow code)."""

from __future__ import annotations

import resource
import time

import pytest
from guest_helpers import (
    PUTS,
    Lines,
    arena_ad,
    asm_guest,
    console_lines,
    create,
    gone,
    wait_for,
)
from unicorn import x86_const as X

from emu.audit import audit
from emu.cpu import vcpu as V
from emu.workload import guest_layout, validate_workload

pytestmark = [pytest.mark.timeout(90), pytest.mark.machine(shared=True)]


def test_touch_read_sets_exactly_A(machine):
    lines = Lines(machine)
    dom = create(machine, "tread", "touch:pages=300,stride=3", memory=16)
    assert wait_for(lambda: "touch done 300" in console_lines(dom))
    lay = dom.hvm.layout
    acc, dirty = arena_ad(machine, dom, lay.arena_start, lay.arena_end)
    assert acc.tolist() == list(range(0x100, 0x100 + 300 * 3, 3))
    assert dirty.size == 0
    assert f"(d{dom.domid}) touch done 300\n" in lines.text
    machine.destroy_domain(dom)
    assert audit(machine) == []


def test_touch_write_sets_exactly_A_and_D(machine):
    dom = create(machine, "twrite", "touch:pages=500,write=1,start=0x180", memory=16)
    assert wait_for(lambda: "touch done 500" in console_lines(dom))
    lay = dom.hvm.layout
    acc, dirty = arena_ad(machine, dom, lay.arena_start, lay.arena_end)
    assert acc.tolist() == list(range(0x180, 0x180 + 500))
    assert dirty.tolist() == acc.tolist()
    # the vCPU idles afterwards: blocked, not burning a pCPU
    assert wait_for(lambda: dom.vcpus[0].blocked)
    machine.destroy_domain(dom)


def test_big_guest_tables_at_top_and_stream(machine):
    # 512 MiB needs 259 table pages: they go to the top of memory, the arena shrinks
    lay = guest_layout(512 << 8)
    assert (lay.pt_start, lay.pt_pages, lay.arena_end) == ((512 << 8) - 259, 259, (512 << 8) - 259)
    dom = create(machine, "stream", "stream:pages=64", memory=8)
    lay = dom.hvm.layout
    assert wait_for(lambda: arena_ad(machine, dom, 0x100, lay.arena_end)[1].size == 64)
    acc, dirty = arena_ad(machine, dom, 0x100, lay.arena_end)
    assert acc.tolist() == dirty.tolist() == list(range(0x100, 0x140))
    machine.destroy_domain(dom)


def test_random_two_vcpus_never_parallel(machine):
    dom = create(machine, "rnd", "random:ws=200,seed=7", memory=8, vcpus=2)
    seen_both = []

    def check():
        running = [v for v in dom.vcpus if v.running]
        seen_both.append(len(running) > 1)
        return all(v.cpu_time_ns > 20_000_000 for v in dom.vcpus)

    assert wait_for(check, timeout=20, step=0.001)
    assert not any(seen_both)
    acc, _ = arena_ad(machine, dom, 0x100, dom.hvm.layout.arena_end)
    assert 0 < acc.size <= 200 and acc.max() < 0x100 + 200
    machine.destroy_domain(dom)
    assert audit(machine) == []


GP_IDT = """
    mov rax, 0x100000
    lea rbx, [rip + gp_handler]
    mov word ptr [rax + 0xd0], bx
    mov word ptr [rax + 0xd2], 0x23
    mov word ptr [rax + 0xd4], 0xef00
    shr rbx, 16
    mov word ptr [rax + 0xd6], bx
    shr rbx, 16
    mov dword ptr [rax + 0xd8], ebx
    mov rcx, 0x101000
    mov word ptr [rcx], 0xfff
    mov qword ptr [rcx + 2], rax
    lidt [rcx]
    xor r12, r12
"""
GP_HANDLER = """
gp_handler:
    add qword ptr [rsp + 8], r13
    inc r12
    add rsp, 8
    iretq
"""


def test_privileged_instructions(machine, tmp_path):
    src = (
        GP_IDT
        + """
    cli
    sti
    mov rax, cr0
    mov cr0, rax
    mov rbx, cr3
    mov cr3, rbx
    invlpg [rax]
    mov r14, cr3
    mov r13, 2
    wrmsr
    mov r13, 3
    lgdt [rcx]
    mov rax, cr0
    btr rax, 31
    mov r13, 3
    mov cr0, rax
    mov ecx, 0xc0000080
    mov r13, 2
    rdmsr
    mov rax, cr4
    btr rax, 5
    mov r13, 3
    mov cr4, rax
    in al, 0x80
    mov r15, rax
    mov al, 0x41
    out 0x80, al
    mov rax, r12
    add al, 0x30
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    sti
idle:
    hlt
    jmp idle
"""
        + GP_HANDLER
    )
    dom = asm_guest(machine, tmp_path, "priv", src)
    v = dom.vcpus[0]
    assert wait_for(lambda: console_lines(dom) == ["5"]), console_lines(dom)
    assert wait_for(lambda: v.blocked)
    with machine.quiesce(dom):
        r = v.regs()
        assert r["r14"] == dom.hvm.layout.pt_start << 12  # mov from cr3: the guest's value
        assert r["r15"] & 0xFF == 0xFF  # a port nothing decodes reads all-ones
        # the real control state never changed
        assert v.uc.reg_read(X.UC_X86_REG_CR0) == V.REAL_CR0
        assert v.uc.reg_read(X.UC_X86_REG_CR4) == V.REAL_CR4
        assert v.uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080) == V.REAL_EFER
        assert v.uc.reg_read(X.UC_X86_REG_GDTR)[1] == V.XEN_VA + V.GDT_OFF
        assert v.stats["reflected"] == 5 and v.vif
    machine.destroy_domain(dom)


def test_hypercalls_and_poweroff(machine, tmp_path):
    src = (
        """
    lea rdx, [rip + msg]
    xor edi, edi
    mov esi, 6
    call 0xf000 + 32 * 18
    xor edi, edi
    call 0xf000 + 32 * 17
    cmp rax, 0x40016
    jne bad
    xor edi, edi
    call 0xf000 + 32 * 29
    call 0xf000 + 32 * 99
    cmp rax, -38
    jne bad
    lea rsi, [rip + okmsg]
    call puts
    mov edi, 2
    lea rsi, [rip + reason]
    call 0xf000 + 32 * 29
bad:
    lea rsi, [rip + badmsg]
    call puts
    hlt
reason:
    .byte 0, 0, 0, 0
msg:
    .ascii "hello\\n"
okmsg:
    .asciz "calls ok\\n"
badmsg:
    .asciz "bad\\n"
"""
        + PUTS
    )
    before = machine.heap.total_avail_pages
    dom = asm_guest(machine, tmp_path, "hc", src)
    assert wait_for(lambda: gone(machine, dom))
    assert console_lines(dom) == ["hello", "calls ok"]
    assert machine.heap.total_avail_pages == before
    assert audit(machine) == []


def test_invalid_opcode_crashes_alone(machine, tmp_path):
    lines = Lines(machine)
    other = create(machine, "bystander", "stream:pages=16", memory=8)
    before = machine.heap.total_avail_pages
    dom = asm_guest(machine, tmp_path, "ud", "    mov rax, 0x1234\n    ud2\n", on_reboot="destroy")
    domid = dom.domid
    assert wait_for(lambda: gone(machine, dom))
    text = lines.text
    # xen/arch/x86/hvm/hvm.c:1760-1762 with HVM_PARAM_TRIPLE_FAULT_REASON = SHUTDOWN_reboot
    # (hvm.c:678); on_reboot="destroy" here, so the domain goes (emu/shutdown.py).
    assert f"(XEN) d{domid}v0 Triple fault - invoking HVM shutdown action 1\n" in text
    assert f"(XEN) *** Dumping Dom{domid} vcpu#0 state: ***\n" in text
    assert f"CONTEXT: hvm guest (d{domid}v0)" in text
    assert "rax: 0000000000001234" in text
    assert machine.heap.total_avail_pages >= before  # every frame went back
    t0 = other.vcpus[0].cpu_time_ns
    assert wait_for(lambda: other.vcpus[0].cpu_time_ns > t0 + 5_000_000)
    machine.destroy_domain(other)
    assert audit(machine) == []


def test_ud_reflected_to_guest_handler(machine, tmp_path):
    src = GP_IDT.replace("0xd0", "0x60").replace("0xd2", "0x62").replace("0xd4", "0x64")
    src = src.replace("0xd6", "0x66").replace("0xd8", "0x68")
    src += """
    mov r13, 2
    ud2
    ud2
    mov rax, r12
    add al, 0x30
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    sti
idle:
    hlt
    jmp idle
ud_handler:
    add qword ptr [rsp], r13
    inc r12
    iretq
"""
    src = src.replace("gp_handler", "ud_handler")
    dom = asm_guest(machine, tmp_path, "udh", src)
    assert wait_for(lambda: console_lines(dom) == ["2"]), console_lines(dom)
    assert not gone(machine, dom)
    machine.destroy_domain(dom)


def test_workload_validation():
    from emu.host import DomainSpec

    def v(w, mem=16, vcpus=1):
        return validate_workload(DomainSpec(name="x", memory=mem, vcpus=vcpus, workload=w))

    assert v("idle") is None
    assert v("touch:pages=100") is None
    assert v("bogus") == (
        "workload: unknown workload 'bogus' (idle, touch, random, stream, phases, asm)"
    )
    # RAM is laid out around the shared_info hole at gfn 0x0e (emu/domain_build.py), so a
    # 16M guest's last gfn is 0x1000 and its arena one page longer than 0x100-0xfff.
    assert v("touch:pages=4000,stride=2") == (
        "workload touch does not fit: pages 0x100-0x203e outside the arena 0x100-0x1000"
    )
    assert v("random:ws=5000") == "workload random does not fit: 5000 pages, the arena has 3841"
    assert v("touch") == "workload: touch needs pages=N"
    assert v("touch:pages=10,write=2") == "workload: write must be 0 or 1"
    assert v("touch:pages=x") == "workload: pages must be an integer, got 'x'"
    assert v("touch:pages=10,start=0x80") is not None  # below the arena
    assert v("asm:/nonexistent/x.S") == "workload: asm: cannot read /nonexistent/x.S"
    assert v("idle", mem=1) == "memory=1M leaves no arena: a guest needs at least 2M"
    assert v("idle", vcpus=17) == "vcpus must be between 1 and 16, got 17"


def test_bad_asm_refused_at_create(machine, tmp_path):
    from emu.domctl import DomainError

    p = tmp_path / "bad.S"
    p.write_text("mov rax, \n")
    before = machine.heap.total_avail_pages
    with pytest.raises(DomainError, match="workload: asm: "):
        create(machine, "badasm", f"asm:{p}")
    assert machine.heap.total_avail_pages == before


def test_pause_unpause_and_quiesce(machine):
    dom = create(machine, "pz", "stream:pages=8", memory=4)
    v = dom.vcpus[0]
    assert wait_for(lambda: v.cpu_time_ns > 5_000_000)
    machine.sched.pause_domain(dom)
    assert not v.running
    t = v.cpu_time_ns
    time.sleep(0.1)
    assert v.cpu_time_ns == t and dom.state_chars()[2] == "p"
    machine.sched.unpause_domain(dom)
    assert wait_for(lambda: v.cpu_time_ns > t)
    with machine.quiesce(dom):
        t = v.cpu_time_ns
        time.sleep(0.05)
        assert not v.running and v.cpu_time_ns == t
    machine.destroy_domain(dom)


def test_idle_guests_burn_no_cpu(machine):
    doms = [create(machine, f"idle{i}", "idle", memory=4) for i in range(3)]
    assert wait_for(lambda: all(d.vcpus[0].blocked for d in doms))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(1.0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    used = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    assert used < 0.1, f"idle host used {used:.3f}s of CPU in 1s"
    for d in doms:
        machine.destroy_domain(d)


def test_timer_wakes_blocked_vcpu(machine, tmp_path):
    src = (
        """
    mov r12, 3
again:
    mov rdi, 0
    call 0xf000 + 32 * 15
    mov rdi, 1
    call 0xf000 + 32 * 15
    mov edi, 1
    call 0xf000 + 32 * 29
    lea rsi, [rip + tick]
    call puts
    dec r12
    jnz again
    cli
    hlt
tick:
    .asciz "tick\\n"
"""
        + PUTS
    )
    lines = Lines(machine)
    dom = asm_guest(machine, tmp_path, "timer", src)
    assert wait_for(lambda: console_lines(dom) == ["tick"] * 3)
    # hlt with IF clear takes the vCPU down; with none left online the domain powers off
    assert wait_for(lambda: gone(machine, dom))
    assert dom.vcpus[0].down
    msg = f"(XEN) arch/x86/hvm/hvm.c:1729:d{dom.domid}v0 All CPUs offline -- powering off.\n"
    assert msg in lines.text
    assert audit(machine) == []


def test_keys_d_0_r_formats(machine):
    import re

    from keyhandlers import KEY_TABLE
    from keyhandlers.dispatch import run_handler

    lines = Lines(machine)
    dom = create(machine, "keys", "stream:pages=32", memory=4)
    v = dom.vcpus[0]
    # The guest kernel's start-up prints Xen's `upcall vector` line (hvm.c:4123) on its own
    # time: wait for it, so that only the keys' lines follow.
    assert wait_for(lambda: f"(XEN) d{dom.domid}v0: upcall vector f3" in lines.text)
    lines.chunks.clear()
    assert wait_for(lambda: v.running, step=0.001)
    run_handler(machine, KEY_TABLE["d"])
    d = lines.text.splitlines()
    assert d[:2] == ["(XEN) 'd' pressed -> dumping registers", "(XEN) "]
    i = d.index(f"(XEN) *** Dumping CPU{v.processor} guest state (d{dom.domid}v0): ***")
    assert d[i + 1] == "(XEN) ----[ Xen-4.22.0  x86_64  debug=y  Not tainted ]----"
    assert d[i + 2] == f"(XEN) CPU:    {v.processor}"
    # In the guest kernel's text (0x1000-0x1fff) or, at start-up (the balloon driver's
    # hvm_op calls), in the hypercall page at 0xf000.
    assert re.fullmatch(r"\(XEN\) RIP:    0023:\[<000000000000[1f][0-9a-f]{3}>\]", d[i + 3])
    assert re.fullmatch(
        rf"\(XEN\) RFLAGS: [0-9a-f]{{16}}   CONTEXT: hvm guest \(d{dom.domid}v0\)", d[i + 4]
    )
    assert d[i + 10].startswith("(XEN) r15: ") and " cr0: 0000000080050033 " in d[i + 10]
    assert d[i + 11] == f"(XEN) cr3: {dom.hvm.layout.pt_start << 12:016x}   cr2: " + d[i + 11][-16:]
    assert d[i + 13].endswith("ss: 001b   cs: 0023") and d[i + 14] == "(XEN) "
    other = 1 - v.processor
    # The other pCPU idles in Xen, which is not x86 code here: one line, no invented state.
    j = d.index(f"(XEN) *** Dumping CPU{other} host state: ***")  # common/keyhandler.c:149
    assert d[j + 1] == f"(XEN) (Xen is not x86 code here: CPU{other} has no host registers to show)"
    rflags = int(re.search(r"RFLAGS: ([0-9a-f]{16})", d[i + 4])[1], 16)
    assert rflags & 2  # bit 1 of RFLAGS is always set
    lines.chunks.clear()
    run_handler(machine, KEY_TABLE["0"])
    z = lines.text.splitlines()
    # common/keyhandler.c:238 "'%c' pressed -> dumping Dom0's registers", x86/traps.c
    # vcpu_show_execution_state() "*** Dumping Dom%d vcpu#%d state: ***"; dom0 has no CPU.
    assert z[:5] == [
        "(XEN) '0' pressed -> dumping Dom0's registers",
        "(XEN) *** Dumping Dom0 vcpu#0 state: ***",
        "(XEN) (d0v0 has no emulated CPU: dom0 runs no kernel here)",
        "(XEN) *** Dumping Dom0 vcpu#1 state: ***",
        "(XEN) (d0v1 has no emulated CPU: dom0 runs no kernel here)",
    ]
    lines.chunks.clear()
    assert wait_for(lambda: v.running, step=0.001)
    run_handler(machine, KEY_TABLE["r"])
    r = lines.text.splitlines()
    assert r[0] == "(XEN) sched_smt_power_savings: disabled"
    assert "(XEN) Scheduler: SMP Credit Scheduler rev2 (credit2)" in r
    assert f"(XEN) \tDomain: {dom.domid} w 256 c 0 v 1" in r
    on_cpu = any(re.fullmatch(rf"\(XEN\) CPU\[0[01]\] current=d{dom.domid}v0, .*", x) for x in r)
    queued = any(x.startswith(f"(XEN) \t  0: [{dom.domid}.0] flags=0") for x in r)
    assert on_cpu or queued, r
    machine.destroy_domain(dom)


def test_pause_holds_vcpus_waiting_in_the_run_queue(machine):
    # two busy guests on two pCPUs keep vCPUs waiting in the queue; a pause must hold those
    doms = [create(machine, f"q{i}", "random:ws=64", memory=4, vcpus=2) for i in range(2)]
    assert wait_for(lambda: all(v.cpu_time_ns > 2_000_000 for d in doms for v in d.vcpus))
    for _ in range(20):
        machine.sched.pause_domain(doms[0])
        t = [v.cpu_time_ns for v in doms[0].vcpus]
        time.sleep(0.03)
        assert [v.cpu_time_ns for v in doms[0].vcpus] == t
        assert not any(v.running for v in doms[0].vcpus)
        machine.sched.unpause_domain(doms[0])
        time.sleep(0.01)
    for d in doms:
        machine.destroy_domain(d)
