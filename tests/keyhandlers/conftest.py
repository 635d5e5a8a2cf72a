"""Fixtures of the key tests: `m`, a machine with one guest that has faulted pages in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from guest_helpers import create, new_machine, wait_for

from emu.machine import Machine


@pytest.fixture(scope="module")
def m() -> Iterator[Machine]:
    """One per test module: a 2-vCPU guest `g1` touching 32 pages (`m.test_dom`)."""
    machine = new_machine()
    dom = create(machine, "g1", "touch:pages=32", vcpus=2)
    assert wait_for(lambda: machine.perfc.total("calls to shadow_fault") > 32)
    machine.test_dom = dom
    yield machine
    machine.shutdown()
