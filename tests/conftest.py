"""Shared test set-up: the `e2e` marker and the helper modules' import path.

Tests mirror the code: tests/emu/, tests/keyhandlers/, tests/xenconsole/ run in-process;
tests/e2e/ starts `xenconsole serve` subprocesses and is marked `e2e`, so
`pytest -m "not e2e"` runs the fast part alone. The helper modules (guest_helpers,
console_hosts, shadow_harness) stay in tests/ and are importable from every folder
(pyproject's `pythonpath`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import keyhandlers

# The built-in debug keys, registered as `xenconsole serve` does at start-up.
keyhandlers.load_builtin()

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
