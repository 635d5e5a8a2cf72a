"""A 64-bit PV vCPU: one Unicorn instance running the guest on its own page tables.

Direct paging: the Uc's CR3 is the guest's validated L4 (kernel mode: `guest_table`, user
mode: `guest_table_user`), so the CPU walks the guest's own tables; Xen's slots 256 (M2P)
and 260 (GDT area) are in every validated L4 (emu/pv/xen.py). The guest runs at CPL 3 in
both of its modes, as 64-bit PV guests do; Xen entered it once through an `iretq` in the
per-domain area. Everything else reaches the hypervisor through hooks:

- `syscall` in guest-kernel mode is a hypercall (emu/pv/hypercall.py); in user mode it is
  bounced to the guest's syscall callback (emu/pv/traps.py);
- exceptions (#PF, #GP, `int n`, ...) go through Xen's rules (emu/pv/traps.py): privileged
  instructions emulated, the rest bounced to the guest's trap table;
- an invalid opcode is checked for the forced-emulation prefix (`ud2; "xen"; cpuid`).

`run()` returns to the scheduler (emu/cpu/sched.py) what it must do next: ('slice',),
('yield',), ('block',), ('shutdown', reason), ('crash', how, text).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import time
import traceback

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from emu.cpu.ucctx import ERR_OFF, OLD_OFF, RegReader
from emu.cpu.vcpu import REAL_CR0, REAL_CR4, REAL_EFER
from emu.domain import VcpuRecord
from emu.pv import xen as XF

UNTIL = 1 << 63
SLICE_INSNS = 200_000
FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_USER_CS = 0xE033, 0xE02B, 0xE033
RFLAGS_IF = 0x200
REG_NAMES = (
    "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags "
    "cs ss ds es fs gs fs_base gs_base"
).split()
REG = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in REG_NAMES}
REG["rflags"] = X.UC_X86_REG_EFLAGS


class Ack:
    """Reads the pending exception's error code and `is_int`, marks it delivered (the
    Unicorn #1883 workaround of emu/cpu/vcpu.py, plus qemu's exception_is_int)."""

    def __init__(self, uc: Uc) -> None:
        self.ctx = uc.context_save()
        base = self.ctx.context.value
        self.err = ctypes.c_int32.from_address(base + ERR_OFF)
        self.is_int = ctypes.c_int32.from_address(base + ERR_OFF + 4)
        self.old = ctypes.c_int32.from_address(base + OLD_OFF)
        from unicorn.unicorn_py3.unicorn import uclib

        self._uch, self._raw = uc._uch, self.ctx.context
        self._save, self._restore = uclib.uc_context_save, uclib.uc_context_restore

    def __call__(self) -> tuple[int, bool]:
        self._save(self._uch, self._raw)
        err, is_int = self.err.value, bool(self.is_int.value)
        self.old.value = -1
        self._restore(self._uch, self._raw)
        return err & 0xFFFFFFFF, is_int


class FastRegs:
    """One Uc's registers through the C library directly: the binding's reg_read/write
    cost several microseconds each, and a bounce or an iret takes a dozen of them."""

    def __init__(self, uc: Uc) -> None:
        from unicorn.unicorn_py3.unicorn import uclib

        self._uch = uc._uch
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)
        self._read, self._write = uclib.uc_reg_read, uclib.uc_reg_write

    def read(self, reg: int) -> int:
        self._buf.value = 0  # segment selectors are written as 16 bits
        self._read(self._uch, reg, self._ref)
        return self._buf.value

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value & 0xFFFFFFFFFFFFFFFF
        self._write(self._uch, reg, self._ref)


class RegBatch:
    """A fixed list of registers read or written in one C call (uc_reg_{read,write}_batch)."""

    def __init__(self, uc: Uc, regs: list[int]) -> None:
        from unicorn.unicorn_py3.unicorn import uclib

        n = len(regs)
        self._uch = uc._uch
        self._regs = (ctypes.c_int * n)(*regs)
        self._vals = (ctypes.c_uint64 * n)()
        self._ptrs = (ctypes.c_void_p * n)(
            *[ctypes.addressof(self._vals) + 8 * i for i in range(n)]
        )
        self._n = n
        self._read, self._write = uclib.uc_reg_read_batch, uclib.uc_reg_write_batch

    def read(self) -> list[int]:
        ctypes.memset(self._vals, 0, 8 * self._n)
        self._read(self._uch, self._regs, self._ptrs, self._n)
        return list(self._vals)

    def write(self, values) -> None:
        for i, v in enumerate(values):
            self._vals[i] = v & 0xFFFFFFFFFFFFFFFF
        self._write(self._uch, self._regs, self._ptrs, self._n)


HC_IN = [X.UC_X86_REG_RAX, X.UC_X86_REG_RIP, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_RDI]
HC_IN += [X.UC_X86_REG_RSI, X.UC_X86_REG_RDX, X.UC_X86_REG_R10, X.UC_X86_REG_R8]
HC_OUT = [X.UC_X86_REG_RCX, X.UC_X86_REG_R11, X.UC_X86_REG_RAX]


class PVVCPU(VcpuRecord):
    """`struct vcpu` of a 64-bit PV guest (arch.pv state) with its Unicorn instance."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, machine, dom, vcpu_id: int, processor: int = 0) -> None:
        super().__init__(vcpu_id, processor=processor, blocked=True)
        self.machine = machine
        self.ram_mm = machine.ram.mm  # byte reads for the hypercall exit's event check
        self.domain = dom
        self.kernel_mode = True  # TF_kernel_mode
        self.guest_table = 0  # MFN of the kernel L4 (guest_table)
        self.guest_table_user = 0
        self.trap_ctxt: dict[int, tuple[int, int, int]] = {}  # vector -> (flags, cs, address)
        self.callbacks: dict[int, tuple[int, int]] = {}  # type -> (address, flags)
        self.kernel_ss, self.kernel_sp = FLAT_KERNEL_SS, 0
        self.vcr0, self.vcr2, self.vcr4 = 0x80050033, 0, 0x620
        self.gs_base_user = 0
        self.iopl = 0
        self.gdt_frames: list[int] = []
        self.gdt_ents = 0
        self.pending: tuple | None = None
        self.kicked = False
        self.down = False
        self.wake_at: int | None = None
        self.dead = False
        self.last_pcpu: int | None = None
        self.poll_ports: list[int] | None = None
        self.runstate_since = time.monotonic_ns()
        self.stats = {"runs": 0, "hypercalls": 0, "bounced": 0, "emulated": 0}
        self.entering: tuple[int, int] | None = None
        self.rip_written = False  # set by traps.bounce / do_iret (see _on_syscall)
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map_ptr(0, machine.ram.size, UC_PROT_ALL, machine.ram.ptr)
        uc.reg_write(X.UC_X86_REG_CR4, REAL_CR4)
        uc.reg_write(X.UC_X86_REG_MSR, (0xC0000080, REAL_EFER))
        uc.reg_write(X.UC_X86_REG_CR0, REAL_CR0)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, XF.gdt_va(vcpu_id), XF.LAST_RESERVED_GDT_BYTE, 0))
        from emu.pv import hypercall, hypercall_mm, traps, vcpu_op  # the latter two register

        del hypercall_mm, vcpu_op

        self._traps = traps
        self._hypercall = hypercall
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self.uc = uc
        uc.ctl_flush_tb()
        self.ack = Ack(uc)
        fast = FastRegs(uc)
        self.rr, self.rw = fast.read, fast.write
        # A hypercall's registers in one call each way: in, and out with 0-5 clobbers.
        self.hc_in = RegBatch(uc, HC_IN)
        self.hc_out = [RegBatch(uc, HC_OUT + HC_IN[3 : 3 + k]) for k in range(6)]
        self._cr2 = RegReader(uc, X.UC_X86_REG_CR2)
        from emu.pv.debugreg import DebugRegs

        self.debug = DebugRegs(self)

    def __repr__(self) -> str:
        return f"<PVVCPU d{self.domain.domid}v{self.vcpu_id}>"

    @property
    def name(self) -> str:
        return f"d{self.domain.domid}v{self.vcpu_id}"

    # ---- state ----------------------------------------------------------------------------

    def reg(self, name: str) -> int:
        return self.uc.reg_read(REG[name])

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(REG[name], value & 0xFFFFFFFFFFFFFFFF)

    def regs(self) -> dict[str, int]:
        """The guest-visible state (only while the vCPU is not running)."""
        r = {n: self.uc.reg_read(i) for n, i in REG.items()}
        r.update(cr0=self.vcr0, cr2=self.vcr2, cr3=self.cr3_mfn() << 12, cr4=self.vcr4)
        r["gss"] = self.gs_base_user
        return r

    @property
    def upcall_pend(self) -> int:
        """vcpu_info.evtchn_upcall_pending in shared_info (key `q`)."""
        return int(self.machine.ram.u8[(self.domain.pv.shared_info_mfn << 12) + self.vcpu_id * 64])

    @property
    def upcall_mask(self) -> int:
        """vcpu_info.evtchn_upcall_mask in shared_info (key `q`)."""
        return int(
            self.machine.ram.u8[(self.domain.pv.shared_info_mfn << 12) + self.vcpu_id * 64 + 1]
        )

    @functools.cached_property
    def upcall_at(self) -> int:
        """Machine address of this vCPU's evtchn_upcall_pending byte (shared_info is fixed)."""
        return (self.domain.pv.shared_info_mfn << 12) + self.vcpu_id * 64

    def cr3_mfn(self) -> int:
        return self.guest_table if self.kernel_mode else self.guest_table_user

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self.debug.tlb_changed()

    def load_cr3(self) -> None:
        """Point the CPU at the current mode's L4 (write_ptbase())."""
        self.uc.reg_write(X.UC_X86_REG_CR3, self.cr3_mfn() << 12)
        if "debug" in self.__dict__:  # load_cr3 also runs before the vCPU is complete
            self.debug.tlb_changed()

    def toggle_guest_mode(self) -> None:
        """toggle_guest_mode(): kernel <-> user page tables and GS bases."""
        self.kernel_mode = not self.kernel_mode
        gs = self.uc.reg_read(X.UC_X86_REG_GS_BASE)
        self.uc.reg_write(X.UC_X86_REG_GS_BASE, self.gs_base_user)
        self.gs_base_user = gs
        self.load_cr3()

    def enter(self, area, rip: int, rsp: int, rsi: int, rflags: int = 0x202) -> None:
        """Initial state (arch_set_info_guest): kernel mode at `rip`; Xen's `iretq` in the
        per-domain area takes the vCPU from CPL 0 to CPL 3 on its first slice."""
        self.kernel_mode = True
        self.load_cr3()
        start, frame = area.write_entry_frame(
            self.vcpu_id, rip, FLAT_KERNEL_CS, rflags, rsp, FLAT_KERNEL_SS
        )
        uc = self.uc
        for name in REG_NAMES[:16]:
            uc.reg_write(REG[name], 0)
        uc.reg_write(X.UC_X86_REG_RSI, rsi)
        uc.reg_write(X.UC_X86_REG_RSP, frame)
        uc.reg_write(X.UC_X86_REG_RIP, start)
        self.kernel_sp = rsp
        self.blocked = False

    # ---- one slice -----------------------------------------------------------------------

    def run(self) -> tuple:
        """Run until the slice ends or a hook needs the scheduler (see the module doc)."""
        self.stats["runs"] += 1
        uc = self.uc
        while True:
            # A #UD ends a run with old_exception still set: the next fault would be a #DF.
            self.ack()
            self.pending = None
            err: UcError | None = None
            try:
                uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP), UNTIL, count=SLICE_INSNS)
            except UcError as e:
                err = e
            except Exception as e:  # a hook raised: the binding re-raises it here
                traceback.print_exc(file=sys.stderr)
                self.pending = ("crash", "internal", f"{type(e).__name__}: {e}")
            p = self.pending
            if p is None:
                if err is None:
                    if self.ack.old.value == 8:
                        return ("crash", "triple", "double fault")
                    return ("slice",)
                if err.errno == UC_ERR_INSN_INVALID:
                    p = ("ud",)
                elif err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED):
                    p = ("crash", "unmapped", "access outside machine memory")
                elif err.errno == UC_ERR_FETCH_UNMAPPED:
                    p = ("crash", "unmapped", "fetch outside machine memory")
                else:
                    p = ("crash", "triple", str(err))
            if p[0] == "ud":
                self._traps.invalid_op(self)
                p = self.pending if self.pending and self.pending[0] != "ud" else None
                if p is None:
                    if self.kicked:
                        return ("slice",)
                    continue
            if p[0] == "io_gp":
                self._traps.io_fault(self, p[1], p[2])
                p = self.pending if self.pending and self.pending[0] != "io_gp" else ("again",)
            if p[0] == "again":
                if self.kicked:
                    return ("slice",)
                continue
            return p

    def stop(self, pending: tuple) -> None:
        """From a hook: end this run and tell `run()` why."""
        if self.pending is None or pending[0] == "crash":
            self.pending = pending
        self.uc.emu_stop()

    def crash(self, text: str) -> None:
        self.stop(("crash", "pv", text))

    # ---- hooks ---------------------------------------------------------------------------

    def _on_intr(self, uc: Uc, intno: int, _ud) -> None:
        err, is_int = self.ack()
        if self.debug.hit:
            self.debug.entered_xen()
        try:
            self._traps.on_exception(self, intno, err, is_int)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.stop(("crash", "internal", f"{type(e).__name__}: {e}"))
        if self.kicked and self.pending is None:
            uc.emu_stop()

    def _on_syscall(self, uc: Uc, _ud) -> None:
        """RIP reads as the `syscall` itself here, and Unicorn adds its length to whatever
        RIP holds when the hook returns: a new RIP (iret, a bounce) is written 2 short."""
        self.rip_written = False
        if self.debug.hit:
            self.debug.entered_xen()
        try:
            if self.kernel_mode:
                self._hypercall.dispatch(self)
            else:
                self._traps.user_syscall(self)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.stop(("crash", "internal", f"{type(e).__name__}: {e}"))
        if self.rip_written:
            self.rw(X.UC_X86_REG_RIP, self.rr(X.UC_X86_REG_RIP) - 2)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _ud) -> None:
        self._traps.port_out(self, port, size, value)

    def _on_in(self, uc: Uc, port: int, size: int, _ud) -> int:
        return self._traps.port_in(self, port, size)

    def _on_invalid(self, uc: Uc, _ud) -> bool:
        if self.pending is None:
            self.pending = ("ud",)
        return False
