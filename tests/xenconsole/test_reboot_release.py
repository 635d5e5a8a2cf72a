"""Key `R` frees the old machine at once (issue 15 finding 6): its Unicorn instances, its
RAM and the machine object itself are gone when the new machine boots."""

from __future__ import annotations

import time
import weakref

import pytest
from twisted.internet.task import Clock

import keyhandlers
from emu.host import DomainSpec, HostConfig
from xenconsole.hostrunner import HostRunner

keyhandlers.load_builtin()


class FakeReactor(Clock):
    """A deterministic reactor: vCPU threads' output is queued like a real callFromThread."""

    def callFromThread(self, f, *a, **kw):  # noqa: N802 - Twisted's name
        self.callLater(0, f, *a, **kw)


def settle(r: FakeReactor) -> None:
    for _ in range(400):
        r.advance(0.05)


@pytest.mark.timeout(120)
def test_R_frees_the_old_machine_its_unicorns_and_its_ram():
    r = FakeReactor()
    runner = HostRunner(r, HostConfig(memory=512 << 20, cpus=2, dom0_mem=64 << 20), wait=False)
    runner.start()
    settle(r)
    try:
        for round_ in range(3):
            m = runner.machine
            assert m is not None and m.booted
            doms = [
                m.create_domain(
                    DomainSpec(name=f"g{i}", memory=8, workload="touch:pages=1500,write=1")
                )
                for i in range(2)
            ]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and m.ram.resident_bytes() <= 8 << 20:
                time.sleep(0.01)  # the guests write 2 x 6 MiB
            ucs = [weakref.ref(v.uc) for d in doms for v in d.vcpus]
            ram = m.ram
            assert ram.resident_bytes() > 8 << 20
            old = weakref.ref(m)
            del m, doms
            runner.machine.request_reboot()
            settle(r)
            assert [u() for u in ucs] == [None] * 2, round_
            assert old() is None, round_
            assert ram.resident_bytes() == 0
            assert runner.machine is not None and runner.machine.booted
    finally:
        runner.stop()
