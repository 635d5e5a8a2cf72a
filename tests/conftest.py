"""Shared test set-up: the `e2e` marker, the `machine` fixture, the helper modules' path.

Tests mirror the code: tests/emu/, tests/keyhandlers/, tests/xenconsole/ run in-process;
tests/e2e/ starts `xenconsole serve` (or `xenconsole connect`) subprocesses and is marked
`e2e`, so `pytest -m "not e2e"` runs the fast part alone. The helper modules
(guest_helpers, console_hosts, shadow_harness, shell_host) stay in tests/ and are imported
by bare name from every folder (pyproject's `pythonpath`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import keyhandlers
from emu.boot import boot_sync
from emu.host import HostConfig
from emu.machine import Machine

# The built-in debug keys, registered as `xenconsole serve` does at start-up.
keyhandlers.load_builtin()

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


# The one `machine` fixture. Its host is 512 MiB, 2 pCPUs, dom0 64 MiB, with guests, booted,
# fresh for each test. A test module asks for another shape with `pytestmark =
# pytest.mark.machine(memory=..., cpus=..., dom0_mem=..., guests=False, boot=False,
# shared=True)`, or the same marker on one test. `boot=False` is for the shadow harness
# (tests/shadow_harness.py), which builds its own guest tables; `shared=True` gives the
# module's tests one machine between them (the module's marker sets its shape).
MACHINE_DEFAULTS = {
    "memory": 512 << 20,
    "cpus": 2,
    "dom0_mem": 64 << 20,
    "guests": True,
    "boot": True,
    "shared": False,
}


def machine_shape(node: pytest.Item | pytest.Module) -> dict:
    """The defaults above, updated by the closest `machine` marker."""
    shape = dict(MACHINE_DEFAULTS)
    marker = node.get_closest_marker("machine")
    if marker is not None:
        if marker.args or set(marker.kwargs) - set(MACHINE_DEFAULTS):
            raise pytest.UsageError(f"machine marker takes {sorted(MACHINE_DEFAULTS)}: {marker}")
        shape.update(marker.kwargs)
    return shape


def _build_machine(shape: dict) -> Machine:
    host = HostConfig(memory=shape["memory"], cpus=shape["cpus"], dom0_mem=shape["dom0_mem"])
    m = Machine(host, guests=shape["guests"])
    return boot_sync(m) if shape["boot"] else m


@pytest.fixture(scope="module")
def _module_machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    m = _build_machine(machine_shape(request.node))
    yield m
    m.shutdown()


@pytest.fixture
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A machine of the test's shape (see above), shut down after the test (or module)."""
    shape = machine_shape(request.node)
    if shape["shared"]:
        yield request.getfixturevalue("_module_machine")
        return
    m = _build_machine(shape)
    yield m
    m.shutdown()
