"""Xen's HVM guest ABI (emu/cpu/hvm_hypercall.py) and the guest kernel's balloon driver.

Facts from Xen 4.22 (RELEASE-4.22.0), cited where each is checked:
- xen/arch/x86/cpuid.c:38-160 cpuid_hypervisor_leaves(); public/arch-x86/cpuid.h:35-37, :120
- xen/arch/x86/msr.c:45-100 guest_{rd,wr}msr_xen(); domain.c:192 init_hypercall_page();
  hvm/vmx/vmx.c:1568 vmx_init_hypercall_page()
- xen/arch/x86/hvm/hypercall.c:104-131 hvm_hypercall(): -EPERM from CPL > 0
- xen/arch/x86/hvm/save.c:242, :256 hvm_save() lines; :361 hvm_load() lines; hvm.c:4123
- tools/libs/light/libxl_mem.c:180-330 libxl_set_memory_target(): only the target moves
"""

from __future__ import annotations

import struct

from guest_helpers import Lines, asm_guest, console_lines, create, wait_for

from emu.audit import audit
from emu.cpu.hvm_hypercall import HYPERCALL_PAGE_BYTES
from xenconsole.dom0.fs import Dom0Fs
from xenconsole.dom0.shell import Dom0Shell

PUTS = """
puts:
    lodsb
    test al, al
    jz 1f
    out 0xe9, al
    jmp puts
1:  ret
putdec:                             # rax
    mov rbx, 10
    xor ecx, ecx
2:  xor edx, edx
    div rbx
    push rdx
    inc rcx
    test rax, rax
    jnz 2b
3:  pop rax
    add al, 0x30
    out 0xe9, al
    dec rcx
    jnz 3b
    mov al, 10
    out 0xe9, al
    ret
"""


def xl_shell(machine):
    out = bytearray()
    sh = Dom0Shell(machine, out.extend, Dom0Fs("/"))

    def run(cmd: str) -> tuple[int, str]:
        out.clear()
        status = sh.run(cmd)
        return status, out.decode().replace("\r\n", "\n")

    return run


def test_hypercall_page_bytes():
    """domain.c:192 fills 0xcc, vmx.c:1568 writes `mov eax, i; vmcall; ret` every 32 bytes,
    `ud2` for __HYPERVISOR_iret (23)."""
    p = HYPERCALL_PAGE_BYTES
    assert len(p) == 4096
    assert p[18 * 32 : 18 * 32 + 32] == bytes.fromhex("b8120000000f01c1c3") + b"\xcc" * 23
    assert p[23 * 32 : 23 * 32 + 3] == b"\x0f\x0b\xcc"
    assert p[127 * 32 : 127 * 32 + 9] == bytes.fromhex("b87f0000000f01c1c3")


def test_cpuid_leaves_and_hypercall_page_in_the_guest(machine, tmp_path):
    """An asm guest reads Xen's leaves (cpuid.c:57-69 leaf 0 and 2, :139-153 leaf 4) and
    finds the page the kernel had Xen write through the MSR (msr.c:61)."""
    src = (
        """
    mov r12, rdi
    mov eax, 0x40000000
    cpuid
    mov dword ptr [0x100000], ebx
    mov dword ptr [0x100004], ecx
    mov dword ptr [0x100008], edx
    mov byte ptr [0x10000c], 10
    mov byte ptr [0x10000d], 0
    mov rsi, 0x100000
    call puts
    mov eax, 0x40000000
    cpuid
    call putdec
    mov eax, 0x40000001
    cpuid
    call putdec
    mov eax, 0x40000002
    cpuid
    mov r13, rbx
    call putdec
    mov rax, r13
    call putdec
    mov eax, 0x40000004
    xor ecx, ecx
    cpuid
    mov r13, rcx
    call putdec
    mov rax, r13
    call putdec
    mov eax, 0x40000006
    cpuid
    call putdec
    mov ecx, 0x40000000
    rdmsr
    call putdec
    mov rax, qword ptr [0xf000 + 18 * 32]
    movabs rcx, 0xc1010f00000012b8
    sub rax, rcx
    call putdec
    call 0xf000 + 32 * 17
    call putdec
    cli
    hlt
"""
        + PUTS
    )
    dom = asm_guest(machine, tmp_path, "cpuid", src)
    want = [
        "XenVMMXenVMM",
        str(0x40000005),
        str((4 << 16) | 22),
        "1",
        str(0x40000000),
        str((1 << 2) | (1 << 3) | (1 << 4) | (1 << 6)),
        str(dom.domid),
        "0",
        "0",
        "0",  # the bytes b8 12 00 00 00 0f 01 c1 at entry 18
        str((4 << 16) | 22),
    ]
    assert wait_for(lambda: len(console_lines(dom)) >= len(want)), console_lines(dom)
    assert console_lines(dom) == want


def test_syscall_goes_to_lstar_and_user_mode_cannot_hypercall(machine, tmp_path):
    """syscall -> the guest's LSTAR at CPL 0; sysretq -> CPL 3, where vmcall gets -EPERM
    (hypercall.c:127-131) and a privileged instruction is refused."""
    src = (
        """
    mov ecx, 0xc0000082             # LSTAR
    lea rax, [rip + entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    lea rcx, [rip + user]
    mov r11, 0x202
    sysretq
user:
    call 0xf000 + 32 * 17           # xen_version from CPL 3
    neg rax
    mov r12, rax
    mov eax, 7
    syscall                         # to the kernel, rax = 7
    lea rsi, [rip + nope]
    call puts
    cli
    hlt
entry:
    mov r13, rax
    mov r14, rcx
    mov rax, r12
    call putdec                     # 1: EPERM
    mov rax, r13
    call putdec                     # 7
    lea rax, [rip + user]
    sub r14, rax
    mov rax, r14
    call putdec                     # rcx: the instruction after the syscall
    call 0xf000 + 32 * 17           # CPL 0 again: allowed
    call putdec
    cli
    hlt
nope:
    .asciz "syscall returned\\n"
"""
        + PUTS
    )
    dom = asm_guest(machine, tmp_path, "lstar", src)
    want = ["1", "7", "18", str((4 << 16) | 22)]  # 18: call, neg, mov, mov, syscall
    assert wait_for(lambda: len(console_lines(dom)) >= 4), console_lines(dom)
    assert console_lines(dom) == want


def test_hvm_creation_lines(machine):
    """save.c:242/:256 print a line per save handler at guest_loglvl=all (per vCPU where the
    handler is per vCPU), save.c:361 one for the BSP's CPU record; hvm.c:4123 the upcall
    vector the kernel's balloon driver registers."""
    lines = Lines(machine)
    dom = create(machine, "two", "idle", memory=16, vcpus=2)
    d = dom.domid
    per_vcpu = ["CPU", "LAPIC", "LAPIC_REGS", "MTRR", "CPU_XSAVE", "VIRIDIAN_VCPU"]
    per_vcpu += ["VMCE_VCPU", "TSC_ADJUST", "CPU_MSR"]
    order = ["CPU", "PIC", "IOAPIC", "LAPIC", "LAPIC_REGS", "PCI_IRQ", "ISA_IRQ", "PCI_LINK"]
    order += ["PIT", "RTC", "HPET", "PMTIMER", "MTRR", "VIRIDIAN_DOMAIN", "CPU_XSAVE"]
    order += ["VIRIDIAN_VCPU", "VMCE_VCPU", "TSC_ADJUST", "CPU_MSR"]
    want = []
    for name in order:
        if name in per_vcpu:
            want += [f"(XEN) HVM d{d}v0 save: {name}", f"(XEN) HVM d{d}v1 save: {name}"]
        else:
            want.append(f"(XEN) HVM d{d} save: {name}")
    want.append(f"(XEN) HVM restore d{d}: CPU 0")
    assert wait_for(lambda: "upcall vector" in lines.text)
    got = [ln for ln in lines.text.splitlines() if ln.startswith("(XEN) HVM")]
    assert got == want
    assert f"(XEN) d{d}v0: upcall vector f3" in lines.text.splitlines()


def _xs_target(machine, dom) -> str:
    return machine.pv.xenstore.read(f"/local/domain/{dom.domid}/memory/target")


def test_balloon_driver_follows_memory_target(machine):
    """xl mem-set writes memory/target (libxl_mem.c:322); the kernel's driver, watching it,
    gives frames back (decrease_reservation) and takes them again (populate_physmap)."""
    xl = xl_shell(machine)
    dom = create(machine, "bal", "touch:pages=100,write=1", memory=32)
    assert wait_for(lambda: "touch done 100" in console_lines(dom))
    assert dom.tot_pages == 32 << 8 and _xs_target(machine, dom) == str(32 << 10)
    free = machine.free_pages()
    assert xl("xl mem-set bal 20") == (0, "")
    assert _xs_target(machine, dom) == str(20 << 10) and dom.target_pages == 20 << 8
    assert wait_for(lambda: dom.tot_pages == 20 << 8), dom.tot_pages
    assert machine.free_pages() == free + (12 << 8)
    # the highest gfns went: the workload's pages (0x100-0x163) stay
    assert int(dom.p2m[0x164]) != 2**64 - 1 and len(dom.populated_gfns()) == (20 << 8) + 1
    assert xl("xl mem-set bal 28") == (0, "")
    assert wait_for(lambda: dom.tot_pages == 28 << 8), dom.tot_pages
    status, out = xl("xl list bal")
    assert status == 0 and out.splitlines()[1].split()[2] == "28"
    # Above its first size the driver has nothing ballooned to take back (no hotplug).
    assert xl("xl mem-max bal 64") == (0, "") and xl("xl mem-set bal 40") == (0, "")
    assert wait_for(lambda: dom.tot_pages == 32 << 8)
    assert audit(machine) == []


def test_asm_guest_without_balloon_keeps_its_frames(machine, tmp_path):
    """No driver, no change: Mem and nr_pages stay, only the target moves."""
    xl = xl_shell(machine)
    dom = asm_guest(machine, tmp_path, "nob", "    sti\n1:  hlt\n    jmp 1b\n", memory=16)
    assert xl("xl mem-set nob 8") == (0, "")
    assert dom.target_pages == 8 << 8 and _xs_target(machine, dom) == str(8 << 10)
    status, out = xl("xl list nob")
    assert status == 0 and out.splitlines()[1].split()[2] == "16"
    assert dom.tot_pages == 16 << 8


def test_reservation_struct_layout():
    """public/memory.h struct xen_memory_reservation: handle, nr_extents, extent_order,
    mem_flags, domid -- 8 + 8 + 4 + 4 + 2 bytes (emu/cpu/hvm_memory.py reads 26)."""
    assert struct.calcsize("<QQIIH") == 26
