"""`A` (keyhandlers/core.py): Xen 4.22's alternative key handling toggle."""

from __future__ import annotations

from guest_helpers import press


def test_A_toggles(m):
    # keyhandler.c:511 "'%c' pressed -> using %s key handling"
    assert press(m, "A") == ["'A' pressed -> using alternative key handling"]
    assert press(m, "A") == ["'A' pressed -> using normal key handling"]
