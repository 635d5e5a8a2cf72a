"""Per-machine state that a key keeps between presses (Xen keeps it in static variables)."""

from __future__ import annotations

import weakref
from typing import Any

_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def key_state(machine, key: str, **defaults: Any) -> dict[str, Any]:
    """The dict key `key` keeps for `machine`, created from `defaults` on first use."""
    per = _STATE.setdefault(machine, {})
    return per.setdefault(key, dict(defaults))
