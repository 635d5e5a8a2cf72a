"""Acceptance 2: random create / destroy / mem-set / mem-max, audit after every step.

Runs directly on the emulated machine (no server) through the dom0 shell's `xl`, on a small
host. The guest subsystems (vCPUs, shadow paging) are left out: this is about the memory
model, and without them a domain's frames are exactly its memory plus its shared_info page.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from emu.audit import audit
from emu.boot import boot_sync
from emu.host import HostConfig
from emu.machine import Machine
from xenconsole.dom0.fs import Dom0Fs
from xenconsole.dom0.shell import Dom0Shell

NAMES = ["a", "b", "Domain-0", "nosuch"]
MIB = st.one_of(
    st.integers(-8, 300), st.integers(2, 64), st.sampled_from([0, 1, 2, 64, 127, 128, 200, 256])
)


class MemoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(HostConfig(memory=256 << 20, cpus=2, dom0_mem=64 << 20), guests=False)
        boot_sync(self.m)
        self.out = bytearray()
        self.sh = Dom0Shell(self.m, self.out.extend, Dom0Fs("/"))

    def xl(self, cmd: str) -> tuple[int, str]:
        self.out.clear()
        return self.sh.run(cmd), self.out.decode()

    def snapshot(self):
        return self.m.free_pages(), {d: x.tot_pages for d, x in self.m.domains.items()}

    def dom(self, name):
        return self.m.find_domain(name)

    @rule(name=st.sampled_from(NAMES), mem=MIB, maxmem=st.one_of(st.none(), MIB))
    def create(self, name, mem, maxmem):
        before = self.snapshot()
        existed = self.dom(name) is not None
        extra = f" maxmem={maxmem}" if maxmem is not None else ""
        status, out = self.xl(f"xl create -q /dev/null 'name=\"{name}\"' memory={mem}{extra}")
        fits = mem > 0 and (mem << 8) + 1 <= before[0]
        must_fail = existed or not fits or (maxmem is not None and maxmem < mem)
        if status == 0:
            assert not must_fail
            d = self.dom(name)
            assert d.tot_pages == mem << 8 and d.xenheap_pages == 1
            assert self.m.free_pages() == before[0] - (mem << 8) - 1
        else:
            # Refused (must_fail, or the workload does not fit): one error, nothing taken.
            assert out.endswith("\n") and self.snapshot() == before, out
        if must_fail:
            assert status != 0
        event(f"create {'ok' if status == 0 else 'refused'}")

    @rule(name=st.sampled_from(NAMES))
    def destroy(self, name):
        before = self.snapshot()
        d = self.dom(name)
        status, _ = self.xl(f"xl destroy {name}")
        if d is None or d.domid == 0:
            assert status == 1 and self.snapshot() == before
        else:
            event("destroy ok")
            assert status == 0 and name not in [x.name for x in self.m.domains.values()]
            assert self.m.free_pages() == before[0] + before[1][d.domid] + 1

    @rule(name=st.sampled_from(NAMES), mib=MIB)
    def mem_set(self, name, mib):
        before = self.snapshot()
        d = self.dom(name)
        status, _ = self.xl(f"xl mem-set {name} -- {mib}")
        if d is None:
            assert status == 1 and self.snapshot() == before
            return
        kb = mib << 10
        ok = 0 <= kb <= d.static_max_kb and not (d.domid == 0 and kb < 128 << 10)
        assert (status == 0) == ok
        event(f"mem-set {'ok' if ok else 'refused'}")
        if not ok:
            assert self.snapshot() == before
            return
        old = before[1][d.domid]
        want = kb >> 2
        # libxl_set_memory_target() moves only the target (tools/libs/light/libxl_mem.c:
        # 180-330); a domU's frames move when its balloon driver acts, and this machine
        # runs no guest CPUs. dom0's driver is modelled as reaching the target at once.
        if d.domid == 0:
            expect = want if want <= old else min(want, old + before[0])
        else:
            expect = old
        assert d.tot_pages == expect and d.max_pages == want + 256 and d.target_pages == want
        assert self.m.free_pages() == before[0] + old - expect

    @rule(name=st.sampled_from(NAMES), mib=MIB)
    def mem_max(self, name, mib):
        before = self.snapshot()
        d = self.dom(name)
        status, _ = self.xl(f"xl mem-max {name} -- {mib}")
        if d is None:
            assert status == 1
        else:
            ok = mib >= 0 and (mib << 10) >= d.target_pages * 4
            assert (status == 0) == ok
            if ok:
                assert d.max_pages == ((mib << 10) + 1024) // 4
        assert self.snapshot() == before  # mem-max alone moves no frames

    @invariant()
    def consistent(self):
        assert audit(self.m) == []
        owned = sum(d.tot_pages for d in self.m.domains.values())
        xen = sum(d.xenheap_pages for d in self.m.domains.values())
        assert self.m.free_pages() + owned + xen + self.m.xen_frames() == self.m.ram.nr_frames


MemoryMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_memory_state_machine = pytest.mark.timeout(120)(MemoryMachine.TestCase)
