"""P2M (gfn -> mfn, per domain) and M2P (mfn -> gfn, machine-wide) kept in agreement.

`dom.p2m` is a numpy uint64 array indexed by gfn (INVALID_MFN = hole); `machine.m2p` is a
numpy uint64 array indexed by mfn (INVALID_M2P_ENTRY for frames no domain maps). Every update
goes through `p2m_set_entries` / `p2m_remove_entries`, which write both sides together.
The memory ops that use them live in emu/mm/memory.py.
"""

from __future__ import annotations

import numpy as np

from emu.domain import Domain
from emu.mm.page import INVALID_MFN

INVALID_M2P_ENTRY = (1 << 64) - 1  # asm/mm.h: an M2P slot no domain maps


def new_m2p(nr_frames: int) -> np.ndarray:
    return np.full(nr_frames, INVALID_M2P_ENTRY, dtype=np.uint64)


def p2m_set_entries(machine, dom: Domain, gfns: np.ndarray, mfns: np.ndarray) -> None:
    """Map gfns -> mfns (and mfns -> gfns in the M2P)."""
    gfns = np.asarray(gfns, dtype=np.int64)
    mfns = np.asarray(mfns, dtype=np.int64)
    if len(gfns) == 0:
        return
    dom.ensure_p2m(int(gfns.max()) + 1)
    dom.p2m[gfns] = mfns.astype(np.uint64)
    machine.m2p[mfns] = gfns.astype(np.uint64)


def p2m_remove_entries(machine, dom: Domain, gfns: np.ndarray) -> np.ndarray:
    """Unmap gfns; returns the MFNs they mapped (M2P entries invalidated)."""
    gfns = np.asarray(gfns, dtype=np.int64)
    mfns = dom.p2m[gfns].astype(np.int64)
    dom.p2m[gfns] = INVALID_MFN
    machine.m2p[mfns] = INVALID_M2P_ENTRY
    return mfns


def get_gpfn_from_mfn(machine, mfn: int) -> int | None:
    e = machine.m2p[mfn]
    return None if e == INVALID_M2P_ENTRY else int(e)
