"""The vCPU scheduler (`machine.sched`): physical CPUs as host threads, time slices.

Each pCPU is a host thread that takes the first runnable vCPU from one shared run queue
(credit2's single runqueue for the socket), runs it inside `emu_start` for a slice, and puts
it back. Unicorn releases the GIL while guest code runs, so pCPUs really run in parallel;
but a domain's vCPUs never do (LOCK is not atomic across Uc instances, docs/design.md): a
pCPU skips a vCPU whose domain already runs elsewhere. There are min(host cpus, host
cores, 8) pCPU threads; any further emulated pCPUs exist for the keys and stay idle.

Slices are never ended by an `emu_stop()` from another thread: such a stop can land after
an instruction's store but before it retires, and the store then runs twice (measured:
`add [mem],1` x 30 M with a stop every 0.3 ms gave 6,313 extra adds). Whoever wants a pCPU
back -- the timer at the slice end or a `set_timer_op` deadline, `quiesce`, `pause_domain`,
`remove_domain`, `stop` -- only *kicks*: it sets the vCPU's flag (`kicked`). The vCPU's
native block hook (emu/cpu/blockhook.py) then stops the run on the vCPU's own thread at the next
block boundary, or its next Python hook does. Unicorn calls the block hook on entry to every
translated block, chained ones included, so even `jmp $` answers within microseconds
(tests/test_slices_native.py). A kick still set when the timer looks again (KICK_RETRY_NS
later) while the vCPU is inside emu_start is counted in `unanswered`: in practice a Python
hook waiting for the GIL that another thread holds; the vCPU answers once it gets it. With nothing
running the timer sleeps indefinitely: an idle host burns no CPU. Blocked vCPUs (hlt,
SCHEDOP_block) are not on the run queue.

`quiesce(dom)`: keep `dom`'s vCPUs (all, for None) out of `emu_start` for the body of a
`with` block. Callers use `machine.quiesce(dom)` (emu/machine.py), which is this on a
machine with guests.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator

SLICE_NS = 10_000_000  # credit2's default rate limit / timeslice order of magnitude
KICK_RETRY_NS = 10_000_000  # how often the timer looks again at an overdue vCPU
MAX_PCPU_THREADS = 8


class PCPU:
    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.current = None  # the vCPU inside emu_start on this pCPU
        self.prev = None
        self.slice_end = 0
        self.kicked_at = 0  # monotonic ns of this slice's kick by the timer (0: none yet)
        self.thread: threading.Thread | None = None
        self.busy_ns = 0


class Scheduler:
    def __init__(self, machine, nr_pcpus: int | None = None) -> None:
        self.machine = machine
        n = nr_pcpus or machine.host.cpus
        self.nr_cpus = machine.host.cpus
        self.pcpus = [PCPU(i) for i in range(self.nr_cpus)]
        self.nr_threads = max(1, min(n, os.cpu_count() or 1, MAX_PCPU_THREADS))
        self.cond = threading.Condition(threading.RLock())
        self.runq: deque = deque()
        self.vcpus: list = []  # every vCPU known to the scheduler
        self.running_doms: dict[int, int] = {}  # domid -> pCPU running one of its vCPUs
        self.holds: dict[int | None, int] = {}  # quiesce holds: domid (None = all)
        self.stopping = False
        self.started = False
        self.on_crash = None  # fn(vcpu, how, text, cpu): set by emu/hvm.py
        self.on_shutdown = None  # fn(vcpu, reason)
        # fn() when a pCPU goes idle (under the scheduler's lock: it must only set a flag):
        # the idle loop's other work, the scrubber of emu/mm/scrub.py.
        self.on_idle = None
        self.slices = 0
        self.unanswered = 0  # kicks not answered within KICK_RETRY_NS (see the docstring)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        with self.cond:
            if self.started:
                return
            self.started = True
        for p in self.pcpus[: self.nr_threads]:
            p.thread = threading.Thread(
                target=self._pcpu_loop, args=(p,), name=f"pcpu{p.cpu}", daemon=True
            )
            p.thread.start()
        self._timer = threading.Thread(target=self._timer_loop, name="sched-timer", daemon=True)
        self._timer.start()

    def stop(self) -> bool:
        """Stop every pCPU thread (machine shutdown); safe to call twice. False if one is
        still running after the wait (its vCPU must then not be released)."""
        with self.cond:
            self.stopping = True
            for p in self.pcpus:
                if p.current is not None:
                    p.current.kicked = True  # its own block hook ends the run
            self.cond.notify_all()
        me = threading.current_thread()
        for p in self.pcpus:
            if p.thread is not None and p.thread is not me:
                p.thread.join(timeout=5)
        t = getattr(self, "_timer", None)
        if t is not None and t is not me:
            t.join(timeout=5)
        return not any(p.thread is not None and p.thread.is_alive() for p in self.pcpus)

    def forget_all(self) -> None:
        """After `stop()`: drop every vCPU reference (machine shutdown releases them)."""
        with self.cond:
            self.vcpus = []
            self.runq.clear()
            self.running_doms.clear()
            for p in self.pcpus:
                p.current = p.prev = None

    def add_vcpu(self, vcpu) -> None:
        with self.cond:
            self.vcpus.append(vcpu)
            if self._runnable(vcpu):
                self.runq.append(vcpu)
            self.cond.notify_all()
        self.start()

    def remove_domain(self, dom) -> None:
        """Take a dying domain's vCPUs off every queue; returns once none of them runs."""
        with self.cond:
            mine = [v for v in self.vcpus if v.domain is dom]
            for v in mine:
                v.dead = True
                if v in self.runq:
                    self.runq.remove(v)
                if v.running:
                    v.kicked = True  # its block hook or next Python hook ends the run
            me = threading.current_thread()
            while any(v.running and getattr(v, "_thread", None) is not me for v in mine):
                self.cond.wait(0.05)
            self.vcpus = [v for v in self.vcpus if v.domain is not dom]
            for p in self.pcpus:  # `r`'s "previous vCPU" must not keep a dead one alive
                if p.prev is not None and p.prev.domain is dom:
                    p.prev = None
            self.cond.notify_all()

    # ---- state changes -------------------------------------------------------------------

    def _held(self, domid: int) -> bool:
        return bool(self.holds.get(None) or self.holds.get(domid))

    def _runnable(self, v) -> bool:
        d = v.domain
        return not (
            getattr(v, "dead", False)
            or v.blocked
            or v.running
            or v.pause_count
            or d.pause_count
            or d.shutdown_code is not None
            or d.is_dying
        )

    def wake(self, vcpu) -> None:
        """vcpu_wake(): unblock and queue if runnable."""
        with self.cond:
            if vcpu.down:
                return
            vcpu.blocked = False
            vcpu.wake_at = None
            if self._runnable(vcpu) and vcpu not in self.runq:
                self.runq.append(vcpu)
            self.cond.notify_all()

    def requeue_domain(self, dom) -> None:
        """After an unpause: queue every runnable vCPU of `dom`."""
        with self.cond:
            for v in self.vcpus:
                if v.domain is dom and self._runnable(v) and v not in self.runq:
                    self.runq.append(v)
            self.cond.notify_all()

    def pause_domain(self, dom) -> None:
        """domain_pause(): synchronous, returns once none of its vCPUs runs."""
        with self.cond:
            dom.pause_count += 1
            self._drain(dom.domid)

    def unpause_domain(self, dom) -> None:
        with self.cond:
            if dom.pause_count > 0:
                dom.pause_count -= 1
        self.requeue_domain(dom)

    def _drain(self, domid: int | None) -> None:
        """With the lock held: kick matching running vCPUs and wait until none runs."""

        def busy() -> list:
            return [
                p.current
                for p in self.pcpus
                if p.current is not None and (domid is None or p.current.domain.domid == domid)
            ]

        for v in busy():
            v.kicked = True  # the next block boundary or hook ends the run
        while busy():
            self.cond.wait(0.002)

    @contextlib.contextmanager
    def quiesce(self, dom=None) -> Iterator[None]:
        """No vCPU of `dom` (of any domain for None) is inside emu_start during the block."""
        key = None if dom is None else dom.domid
        me = threading.current_thread()
        on_pcpu = any(p.thread is me for p in self.pcpus)
        with self.cond:
            self.holds[key] = self.holds.get(key, 0) + 1
            if not on_pcpu:
                self._drain(key)
        try:
            yield
        finally:
            with self.cond:
                self.holds[key] -= 1
                if not self.holds[key]:
                    del self.holds[key]
                self.cond.notify_all()

    # ---- the pCPU loop -------------------------------------------------------------------

    def _pick(self):
        for v in self.runq:
            d = v.domain.domid
            if d not in self.running_doms and not self._held(d):
                if not self._runnable(v):
                    continue  # paused (or shut down) while queued: stays until unpaused
                self.runq.remove(v)
                return v
        return None

    def _pcpu_loop(self, p: PCPU) -> None:
        me = threading.current_thread()
        while True:
            with self.cond:
                v = None
                idled = False
                while not self.stopping:
                    v = self._pick()
                    if v is not None:
                        break
                    idled = True
                    if self.on_idle is not None:
                        self.on_idle()
                    self.cond.wait()
                if self.stopping:
                    return
                self._count_schedule(p, v, idled)
                v.running = True
                v.kicked = False  # under the lock: a kick from now on ends this run
                v._thread = me
                v.processor = p.cpu
                p.current = v
                p.slice_end = time.monotonic_ns() + SLICE_NS
                p.kicked_at = 0
                self.running_doms[v.domain.domid] = p.cpu
                self.slices += 1
                self.cond.notify_all()  # the timer learns the new slice end
            t0 = time.monotonic_ns()
            try:
                outcome = v.run()
            except Exception as e:  # never lose a pCPU thread
                traceback.print_exc(file=sys.stderr)
                outcome = ("crash", "internal", f"{type(e).__name__}: {e}")
            dt = time.monotonic_ns() - t0
            with self.cond:
                v.cpu_time_ns += dt
                p.busy_ns += dt
                p.prev, p.current = v, None
                v.running = False
                v.last_pcpu = p.cpu
                self.running_doms.pop(v.domain.domid, None)
                kind = outcome[0]
                if kind == "block" and getattr(v, "upcall_irr", False) and v.vif:
                    kind = "slice"  # an event came in as it blocked: vcpu_block() rechecks
                if kind == "block":
                    v.blocked = True
                elif kind in ("slice", "yield") and self._runnable(v):
                    self.runq.append(v)
                self.cond.notify_all()
            if v.dead:  # destroyed meanwhile: nothing to report (a dying domain crashes
                pass  # silently), and its domain may already be gone (see VCPU.release)
            elif kind == "crash" and self.on_crash is not None:
                self._call(self.on_crash, v, outcome[1], outcome[2], p.cpu)
            elif kind == "shutdown" and self.on_shutdown is not None:
                self._call(self.on_shutdown, v, outcome[1])
            if v.dead and getattr(v, "release_pending", False):
                v.release()  # destroyed from inside its own run (see VCPU.release)

    def _count_schedule(self, p: PCPU, v, idled: bool) -> None:
        """Xen's perf counters for the schedule() passes that put `v` on `p`
        (common/sched/core.c:2685 sched_run, :2426 sched_ctx; credit2.c:3595 schedule): one
        pass per pick, one more when the pCPU went idle first, a context switch per change."""
        pc = self.machine.perfc
        ctr, ix = pc.cpu[p.cpu % pc.nr_cpus], pc.index
        passes = 2 if idled and p.prev is not None else 1
        switches = (2 if p.prev is not None else 1) if idled else int(v is not p.prev)
        ctr[ix["sched_run"]] += passes
        ctr[ix["schedule"]] += passes
        ctr[ix["sched_ctx"]] += switches

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            traceback.print_exc(file=sys.stderr)

    # ---- the timer thread ----------------------------------------------------------------

    def _timer_loop(self) -> None:
        now_fn = self.machine.now
        with self.cond:
            while not self.stopping:
                now = time.monotonic_ns()
                timeout = None
                for p in self.pcpus:
                    v = p.current
                    if v is None:
                        continue
                    if now >= p.slice_end:
                        if not p.kicked_at:
                            v.kicked = True  # a flag only: see the module docstring
                            p.kicked_at = now
                        elif v.kicked and getattr(v, "in_emu", False):
                            self.unanswered += 1  # see the module docstring
                        p.slice_end = now + KICK_RETRY_NS
                    left = p.slice_end - now
                    timeout = left if timeout is None else min(timeout, left)
                mnow = now_fn()
                for v in self.vcpus:
                    if v.wake_at is not None and v.blocked:
                        if v.wake_at <= mnow:
                            self.wake(v)
                        else:
                            left = v.wake_at - mnow
                            timeout = left if timeout is None else min(timeout, left)
                self.cond.wait(None if timeout is None else max(timeout, 100_000) / 1e9)

    # ---- views for keys and xl -------------------------------------------------------------

    def current_on(self, cpu: int):
        return self.pcpus[cpu].current if cpu < len(self.pcpus) else None

    def runq_snapshot(self) -> list:
        with self.cond:
            return list(self.runq)
