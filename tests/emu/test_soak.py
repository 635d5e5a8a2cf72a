"""The soak of issue 15, short: create/destroy cycles of small guests (some crashing) leave
no growth behind (the 2,000-cycle run with its figures is bench/bench_soak.py)."""

from __future__ import annotations

import gc

import pytest
from soak_cycles import soak


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
@pytest.mark.timeout(300)
def test_create_destroy_cycles_leave_no_growth(tmp_path, capfd):
    # Without the collector: everything a cycle allocates must go by reference counting,
    # as it does in the server between two collections.
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        res = soak(200, tmp_path, sample_every=25)
    finally:
        if was:
            gc.enable()
    assert res.cycles == 200 and res.domains_left == 0
    assert res.violations == []
    assert res.crashed > 0  # some guests crashed and were destroyed by the crash path
    rss = [mb for _, mb in res.samples[1:]]  # after the first 25 cycles: warm
    # Generous: a leak of the old size (a Uc, its hooks and translation buffers per
    # destroyed guest) grows several MB per 25 cycles; what is left is allocator noise.
    assert max(rss) - rss[0] < 16, res.samples
    assert len({fds for _, fds in res.fds}) == 1, res.fds
    assert len({n for _, n in res.threads}) == 1, res.threads
    assert "Traceback" not in capfd.readouterr().err  # e.g. a crash dump racing a destroy
