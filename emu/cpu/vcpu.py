"""vCPUs: one Unicorn instance per guest vCPU, over the machine's shared RAM.

The guest kernel runs at CPL 3 with paging on; the Uc's CR3 only ever holds a shadow L4
returned by `dom.paging.update_cr3()`. Everything the guest cannot do itself reaches the
hypervisor through the hooks installed here:

- UC_HOOK_INTR: #PF -> the shadow fault path; #GP -> privileged-instruction emulation
  (emu/cpu/priv_op.py); #DB -> a shadow or Xen single-step; anything else is reflected into the
  guest through the IDT it loaded with `lidt`, or, with none, is a triple fault.
- UC_HOOK_INSN_INVALID -> #UD: a `vmcall` is the hypercall (emu/cpu/hvm_hypercall.py), any
  other #UD is reflected or a triple fault. UC_HOOK_INSN cpuid -> Xen's leaves; syscall ->
  the guest's LSTAR (emu/cpu/priv_op.py); IN/OUT -> port 0xe9, other ports all-ones.
The guest's CPL is virtual (`vcpl`: 0 from entry, `syscall` -> 0, `sysret` -> 3); the
emulated CPU runs all guest code at ring 3, so every privileged instruction traps.

Hooks that cannot finish inside the hook (block, reflect, crash) set `pending` and stop the
run; the scheduler calls `run()` and acts on what it returns.

Slices end on the vCPU's own thread, never by an `emu_stop()` from another thread: the
scheduler sets the vCPU's flag (`kicked`) and the native block hook (emu/cpu/blockhook.py) stops
the run at the next block boundary; every Python hook (#PF/#GP/..., hypercall, port I/O) also
ends the run when the flag is set. `count=` bounds runs only where there is no native hook
(then every run is counted: a vCPU never switches between counted and uncounted runs, since
an uncounted run after a counted one that a hook stopped mid-exception took a spurious #DF
at its first instruction, tests/test_vcpu.py::test_privileged_instructions).
"""

from __future__ import annotations

import struct
import sys
import time
import traceback
import weakref

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

from emu.cpu import blockhook
from emu.cpu.ucctx import ExceptionAck, RegReader
from emu.domain import VcpuRecord
from emu.mm import guestmem
from emu.mm.page import PTE_ADDR_MASK
from emu.mm.page_info import PGC_shadowed_pt
from emu.shadow.private import CRASH, FIXED

RFLAGS_TF, RFLAGS_IF = 0x100, 0x200
UNTIL = 1 << 63  # non-canonical: a run never ends by reaching it
# A counted slice (the fallback, see the module docstring) is at most this many instructions.
SLICE_INSNS = 200_000
EXCP08_DBLE = 8
# Real control state of every vCPU (never changed by the guest): PG|WP|NE|ET|MP|PE,
# PAE|OSFXSR|OSXMMEXCPT, EFER SCE|LME|LMA|NXE.
REAL_CR0, REAL_CR4, REAL_EFER = 0x80010033, 0x620, 0xD01
# What the guest believes: CR0 PG|AM|WP|NE|ET|MP|PE, CR4 PAE.
GUEST_CR0, GUEST_CR4 = 0x80050033, 0x20
EXC_HAS_EC = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
IDT_GATE_INT, IDT_GATE_TRAP = 0xE, 0xF

# Xen's trampoline page (emu/hvm.py builds it): GDT, the iretq, and its frame.
XEN_SLOT = 262
XEN_VA = 0xFFFF000000000000 | (XEN_SLOT << 39)
GDT_OFF, TRAMP_OFF, FRAME_OFF = 0x0, 0x100, 0x200
SEL_UDATA, SEL_UCODE = 0x1B, 0x23
KERNEL_ENTRY = 0x1000


REG_NAMES = (
    "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags "
    "cs ss ds es fs gs fs_base gs_base"
).split()
_REG_IDS = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in REG_NAMES}
_REG_IDS["rflags"] = X.UC_X86_REG_EFLAGS
_CPUID_REGS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)


class VCPU(VcpuRecord):
    """`struct vcpu` of an HVM guest, with its Unicorn instance."""

    __eq__ = object.__eq__  # identity, not the dataclass field comparison
    __hash__ = object.__hash__

    def __init__(self, machine, dom, vcpu_id: int, processor: int = 0) -> None:
        super().__init__(vcpu_id, processor=processor, blocked=False)
        self.machine = machine
        self.domain = dom
        self.guest_cr3 = 0
        self.guest_cr2 = 0
        self.vcr0, self.vcr4 = GUEST_CR0, GUEST_CR4
        self.vcr8 = 0  # the guest's TPR (mov cr8)
        self.vif = False  # virtual RFLAGS.IF (cli/sti)
        self.guest_idt: tuple[int, int] | None = None  # (base, limit) from lidt
        self.pending: tuple | None = None
        self.flag = blockhook.SliceFlag()  # `kicked`: the scheduler wants the pCPU back
        self.in_emu = False  # inside emu_start (the scheduler's unanswered-kick check)
        self.down = False  # hlt with IF clear (hvm_vcpu_down): offline
        self.wake_at: int | None = None  # set_timer_op deadline, machine ns
        self.xen_step: tuple[int, int, bool, bool] | None = None  # (idx, old, TF, stepping)
        self.entering: int | None = None  # Xen L4e to map for the first (trampoline) slice
        self.dead = False
        self.release_pending = False  # release() once this run ends (see release)
        self.last_pcpu: int | None = None
        self.runstate_since = time.monotonic_ns()
        self.vcpl = 0  # the guest's CPL (see the module docstring)
        self.msrs = {}  # the guest's STAR, LSTAR, CSTAR, SFMASK (emu/cpu/priv_op.py)
        self.upcall_vector = 0  # HVMOP_set_evtchn_upcall_vector
        self.upcall_irr = False  # that vector is pending in the (virtual) LAPIC's IRR
        self.stats = {
            "runs": 0,
            "gp_emulated": 0,
            "hypercalls": 0,
            "reflected": 0,
            "counted_runs": 0,
            "hook_stops": 0,  # runs the native block hook ended
            "continuations": 0,
        }
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map_ptr(0, machine.ram.size, UC_PROT_ALL, machine.ram.ptr)
        uc.reg_write(X.UC_X86_REG_CR4, REAL_CR4)
        uc.reg_write(X.UC_X86_REG_MSR, (0xC0000080, REAL_EFER))
        uc.reg_write(X.UC_X86_REG_CR0, REAL_CR0)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, XEN_VA + GDT_OFF, 8 * 5 - 1, 0))
        self.hooks = [
            uc.hook_add(UC_HOOK_INTR, self._on_intr),
            uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL),
            uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID),
            uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT),
            uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN),
            uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid),
        ]
        self.native = blockhook.install(uc, self.flag)
        self.uc: Uc | None = uc
        # Counted runs (no native hook) need code translated after the count hook exists:
        # Unicorn drops translated code when a count is removed, not when one is added.
        uc.ctl_flush_tb()
        self.ack = ExceptionAck(uc)
        self._cr2 = RegReader(uc, X.UC_X86_REG_CR2)

    def __repr__(self) -> str:
        return f"<VCPU d{self.domain.domid}v{self.vcpu_id}>"

    def release(self) -> None:
        """Give back the Unicorn instance now (destroy, `R`), not when the collector runs.

        The binding keeps each hook's ctypes callback in the Uc, and the callback's closure
        holds the Uc and (through the bound method) this vCPU: a cycle that only
        `gc.collect()` breaks, keeping Unicorn's translation buffers and TLB alive. Deleting
        the hooks and dropping every reference to the Uc lets reference counting close it
        (the binding's finalizer calls `uc_close`) as soon as nobody else holds it -- a key
        reading registers at that moment keeps it alive until it is done. The native block
        hook lives inside the Uc and goes with it. Only for a vCPU no pCPU will run again
        (the scheduler has dropped it); safe to call twice.
        """
        uc = self.uc
        if uc is None:
            return
        if self.in_emu:  # destroyed from one of its own hooks: its pCPU releases it after
            self.release_pending = True
            return
        self.uc = None
        self.ack = None  # type: ignore[assignment]  # holds a saved context and uc's handle
        self._cr2 = None  # type: ignore[assignment]
        hooks, self.hooks = self.hooks, []
        thunks = list(uc._callbacks.values())
        for h in hooks:
            try:
                uc.hook_del(h)
            except UcError:  # the hook is gone with the handle either way
                pass
        uc._callbacks.clear()  # what the binding kept alive for those hooks
        uc._mmio_callbacks.clear()
        uc._hook_exception = None  # a hook's exception: its traceback's frames hold the Uc
        for fptr in thunks:
            # The binding's `ctypes.cast` leaves each callback in a cycle with itself (its
            # `_objects` holds both ends), and the thunk holds the closure over the Uc and
            # this vCPU's bound method: with the hook deleted, nothing calls it any more.
            objs = getattr(fptr, "_objects", None)
            if isinstance(objs, dict):
                objs.clear()
        self.pending = None
        if not isinstance(self.domain, weakref.ProxyType):
            # The domain keeps its vCPUs (`q`, `xl list` of a dying domain); the vCPU only
            # names it from now on, so dropping the domain frees both at once.
            self.domain = weakref.proxy(self.domain)

    @property
    def kicked(self) -> bool:
        """The scheduler (timer, quiesce, pause, destroy) asked for the pCPU back."""
        return self.flag.kick

    @kicked.setter
    def kicked(self, value: bool) -> None:
        self.flag.kick = value

    @property
    def name(self) -> str:
        return f"d{self.domain.domid}v{self.vcpu_id}"

    # ---- CONTRACT helpers ----------------------------------------------------------------

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def load_cr3(self, guest_cr3: int) -> None:
        """The guest's CR3 becomes `guest_cr3`; the Uc gets the shadow of it."""
        self.guest_cr3 = guest_cr3
        self.uc.reg_write(X.UC_X86_REG_CR3, self.domain.paging.update_cr3(self, guest_cr3))

    def reg(self, name: str) -> int:
        return self.uc.reg_read(_REG_IDS[name])

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(_REG_IDS[name], value & 0xFFFFFFFFFFFFFFFF)

    def regs(self) -> dict[str, int]:
        """Snapshot of the guest-visible state (only while the vCPU is not running)."""
        r = {n: self.uc.reg_read(i) for n, i in _REG_IDS.items()}
        r["rflags"] = (r["rflags"] & ~RFLAGS_IF) | (RFLAGS_IF if self.vif else 0)
        r.update(cr0=self.vcr0, cr2=self.guest_cr2, cr3=self.guest_cr3, cr4=self.vcr4, gss=0)
        return r

    # ---- entering the guest -----------------------------------------------------------

    def enter(self, xen_l4e: int, vcpu_arg: int, start_info: int) -> None:
        """Prepare the first entry: the first slice starts in Xen's trampoline at CPL 0,
        whose `iretq` drops to the kernel entry at CPL 3. Xen's slot is put in the shadow L4
        for that slice only. (A stop right after an `iretq` was once seen to make the next
        fault arrive as #DF; run() resets old_exception before every run, and a kick may end
        the first slice at the kernel entry, a block boundary like any other.)"""
        uc = self.uc
        self.entering = xen_l4e
        uc.reg_write(X.UC_X86_REG_RSP, XEN_VA + FRAME_OFF)
        uc.reg_write(X.UC_X86_REG_RDI, vcpu_arg)
        uc.reg_write(X.UC_X86_REG_RSI, start_info)
        uc.reg_write(X.UC_X86_REG_RIP, XEN_VA + TRAMP_OFF)

    def _xen_slot_map(self, xen_l4e: int, step: bool) -> None:
        u64 = self.machine.ram.u64
        idx = ((self.uc.reg_read(X.UC_X86_REG_CR3) & PTE_ADDR_MASK) >> 3) + XEN_SLOT
        tf = bool(self.uc.reg_read(X.UC_X86_REG_EFLAGS) & RFLAGS_TF)
        self.xen_step = (idx, int(u64[idx]), tf, step)
        u64[idx] = xen_l4e
        self.flush_tlb()

    def _xen_slot_unmap(self) -> None:
        if self.xen_step is None:
            return
        idx, old, tf, step = self.xen_step
        self.xen_step = None
        u64 = self.machine.ram.u64
        if int(u64[idx]) == self.machine.hvm.xen_l4e:  # unless the shadow code replaced it
            u64[idx] = old
        if step and not tf:  # the run ended before the single step's #DB: drop our TF
            fl = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
            self.uc.reg_write(X.UC_X86_REG_EFLAGS, fl & ~RFLAGS_TF)
        self.flush_tlb()

    # ---- one time slice -------------------------------------------------------------------

    def run(self) -> tuple:
        """Run until preempted or stopped by a hook; returns the outcome for the scheduler:
        ('slice',) runnable, ('block',), ('yield',), ('crash', how, text), ('shutdown', code)."""
        self.pending = None  # `kicked` is cleared by the scheduler when it picks this vCPU
        self.stats["runs"] += 1
        uc = self.uc
        # The error's number and text only: a kept exception would hold its traceback, whose
        # frames hold this vCPU and its Uc in a cycle only the collector breaks.
        err: tuple[int, str] | None = None
        # A stop that lands between raising an exception and its hook leaves old_exception
        # set, and the next fault would arrive as #DF: reset it before every run.
        self.ack(uc)
        if self.entering is not None:
            self._xen_slot_map(self.entering, step=False)
            self.entering = None
        elif self.upcall_irr and self.vif:
            self.upcall_irr = False  # the event-channel upcall (vlapic_set_irq()) is taken
            if not self.inject(self.upcall_vector, None, None):
                return ("crash", "triple", f"vector {self.upcall_vector:#x} with no handler")
            self.vif = False  # an interrupt gate
        count = 0 if self.native else SLICE_INSNS
        if count:
            self.stats["counted_runs"] += 1
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        self.in_emu = True
        try:
            uc.emu_start(rip, UNTIL, count=count)
        except UcError as e:
            err = (e.errno, str(e))
        except Exception as e:  # a hook raised: the binding re-raises it here
            traceback.print_exc(file=sys.stderr)
            self.pending = ("crash", "internal", f"{type(e).__name__}: {e}")
        self.in_emu = False
        by_hook = self.flag.take_stopped()
        if by_hook:
            self.stats["hook_stops"] += 1
        self._xen_slot_unmap()  # a Xen access that never finished its single step
        p = self.pending
        if p is None:
            if err is not None:
                if err[0] == UC_ERR_INSN_INVALID:
                    p = ("exc", 6, None, None)
                elif err[0] in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED):
                    p = ("crash", "unmapped", "access outside machine memory")
                elif err[0] == UC_ERR_FETCH_UNMAPPED:
                    p = ("crash", "unmapped", "fetch outside machine memory")
                else:
                    p = ("crash", "triple", err[1])
            elif not by_hook and self._old_exception() == EXCP08_DBLE:
                # qemu's own triple fault: a fault while delivering a double fault ends the
                # run silently, with old_exception still #DF.
                p = ("crash", "triple", "silent stop")
            else:
                return ("slice",)  # a kick ended it (or the fallback count ran out)
        if p[0] == "exc":
            _, vec, ec, cr2 = p
            if self.inject(vec, ec, cr2):
                return ("slice",)
            return ("crash", "triple", f"exception {vec} with no handler")
        return p

    def _old_exception(self) -> int:
        a = self.ack
        a._save(a._uch, a._raw)
        return a.old.value

    def _end_if_kicked(self, uc: Uc) -> None:
        """A hook is a safe place to end a slice early: the scheduler asked for the pCPU.
        (Called at the end of every hook, so a guest that floods hypercalls or ports, whose
        Python hooks may run long, still gives the pCPU back at its next one.)"""
        b = self.flag.buf
        if b[0] and self.pending is None:
            b[0] = 0  # answered
            uc.emu_stop()

    def block(self) -> None:
        """hlt / SCHEDOP_block: block unless an upcall waits (local_events_need_delivery())."""
        self.stop(("slice",) if self.upcall_irr and self.vif else ("block",))

    def stop(self, pending: tuple) -> None:
        """From a hook: end this run, and tell the scheduler why."""
        if self.pending is None or pending[0] == "crash":
            self.pending = pending
        self.uc.emu_stop()

    # ---- hooks ---------------------------------------------------------------------------

    def _on_intr(self, uc: Uc, intno: int, _ud) -> None:
        err = self.ack(uc)
        try:
            if intno == 14:
                self._page_fault(uc, err)
            elif intno == 13:
                from emu.cpu.priv_op import emulate_gp

                emulate_gp(self)
            elif intno == 1:
                if self.xen_step is not None and self.xen_step[3]:
                    tf = self.xen_step[2]
                    self._xen_slot_unmap()  # clears our TF unless the guest had set it
                    if not tf:
                        return
                if self.domain.paging.debug_trap(self):
                    return
                self.stop(("exc", 1, None, None))
            elif intno == 8:
                self.stop(("crash", "triple", "double fault"))
            else:
                self.stop(("exc", intno, err if intno in EXC_HAS_EC else None, None))
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.stop(("crash", "internal", f"{type(e).__name__}: {e}"))
        self._end_if_kicked(uc)

    def _page_fault(self, uc: Uc, err: int) -> None:
        cr2 = self._cr2()
        if (cr2 >> 39) == (XEN_VA >> 39) and not err & 4 and self.xen_step is None:
            # An implicit supervisor access (GDT read by iretq / a segment load): map Xen's
            # slot for exactly one instruction (TF), then take it away again.
            self._xen_slot_map(self.machine.hvm.xen_l4e, step=True)
            fl = uc.reg_read(X.UC_X86_REG_EFLAGS)
            uc.reg_write(X.UC_X86_REG_EFLAGS, fl | RFLAGS_TF)
            return
        paging = self.domain.paging
        r = paging.page_fault(self, cr2, err)
        if r == FIXED:
            return
        if r == CRASH:
            why = paging.crash_reason or f"unhandled shadow fault at {cr2:#x}"
            self.stop(("crash", "shadow", why))
            return
        self.stop(("exc", 14, paging.fault_error_code(self), cr2))

    def _on_syscall(self, uc: Uc, _ud) -> None:
        from emu.cpu.priv_op import guest_syscall

        try:
            guest_syscall(self)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.stop(("crash", "internal", f"{type(e).__name__}: {e}"))
        self._end_if_kicked(uc)

    def _on_cpuid(self, uc: Uc, _ud) -> int:
        """CPUID: Xen's leaves answered here (1: skip the CPU's own), others by the CPU."""
        from emu.cpu.hvm_hypercall import cpuid_leaf

        leaf = uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        res = cpuid_leaf(self, leaf, uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF)
        if res is None:
            return 0
        for reg, val in zip(_CPUID_REGS, res, strict=True):
            uc.reg_write(reg, val)
        return 1

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _ud) -> None:
        if port == 0xE9 and size == 1:
            self.domain.hvm.console.putc(value & 0xFF)
        self._end_if_kicked(uc)

    def _on_in(self, uc: Uc, port: int, size: int, _ud) -> int:
        self._end_if_kicked(uc)
        if port == 0xE9:
            return 0xE9  # the Bochs "port E9 hack" answer, as hvm_print_line() gives
        return (1 << (8 * size)) - 1

    def _on_invalid(self, uc: Uc, _ud) -> bool:
        """#UD. A `vmcall` is the hypercall: handled here, execution goes on at the RIP the
        hypercall left (Unicorn resumes when this hook returns True). Anything else, or a
        hypercall that ends the run (a continuation, a crash), stops with `pending`."""
        from emu.cpu.hvm_hypercall import VMCALL, vmcall

        rip = uc.reg_read(X.UC_X86_REG_RIP)
        code = guestmem.read_partial(self.machine, self.domain, self.guest_cr3, rip, 3)
        if code != VMCALL:
            self.pending = self.pending or ("exc", 6, None, None)
            return False
        try:
            vmcall(self)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.pending = ("crash", "internal", f"{type(e).__name__}: {e}")
        if self.pending is not None:
            return False  # run() acts on it; RIP is where the hypercall left it
        self._end_if_kicked(uc)
        return True

    # ---- reflecting exceptions into the guest --------------------------------------------

    def inject(self, vec: int, ec: int | None, cr2: int | None) -> bool:
        """Deliver an exception through the guest's IDT (Xen's bounce frame). False if the
        guest has no usable handler: the caller turns that into a triple fault."""
        m, dom = self.machine, self.domain
        if cr2 is not None:
            self.guest_cr2 = cr2
        if self.guest_idt is None:
            return False
        base, limit = self.guest_idt
        if vec * 16 + 15 > limit:
            return False
        try:
            lo, hi = struct.unpack(
                "<QQ", guestmem.read(m, dom, self.guest_cr3, base + vec * 16, 16)
            )
        except guestmem.GuestMemError:
            return False
        if not (lo >> 47) & 1 or ((lo >> 40) & 0xF) not in (IDT_GATE_INT, IDT_GATE_TRAP):
            return False
        handler = (lo & 0xFFFF) | (((lo >> 48) & 0xFFFF) << 16) | ((hi & 0xFFFFFFFF) << 32)
        r = self.regs()
        words = [r["rip"], r["cs"], r["rflags"], r["rsp"], r["ss"]]
        if ec is not None:
            words.insert(0, ec)
        sp = (r["rsp"] & ~0xF) - 8 * len(words)
        ft_count = m.frames.pi["count_info"]

        def shadowed(mfn: int) -> bool:  # never write a shadowed page table behind its back
            return bool(int(ft_count[mfn]) & PGC_shadowed_pt)

        try:
            guestmem.write(
                m, dom, self.guest_cr3, sp, struct.pack(f"<{len(words)}Q", *words), refuse=shadowed
            )
        except guestmem.GuestMemError:
            return False
        self.set_reg("rsp", sp)
        self.set_reg("rip", handler)
        self.set_reg("rflags", r["rflags"] & ~RFLAGS_TF | RFLAGS_IF)
        self.stats["reflected"] += 1
        return True
