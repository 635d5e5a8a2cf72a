"""Ground truth for `xenconsole record`/`plot`: the `phases` workload (emu/workload.py) reads
range A in windows 0-1, B in 2-3, A in 4-5, then halts. Each sample (keyhandlers/access.py
`sample`, the control channel's `access` request: U then Z) must count exactly the pages
the phase read plus the kernel's own (start-info GFN 0, text GFN 1, stack GFN 0x10); the
idle-age histogram after the phases is exact; the series survives the .npz round trip; and
the PNG `plot` draws, read back as an array, has coloured pixels only in the rows of each
interval's pages.
"""

from __future__ import annotations

import numpy as np
import pytest
from guest_helpers import console_lines, create, new_machine, wait_for

from emu.access.scan import scan_domain
from keyhandlers.access import bucket_edges, sample
from xenconsole.plot import draw
from xenconsole.plot import edges as plot_edges
from xenconsole.record import FORMAT, Series, load

pytestmark = pytest.mark.timeout(180)

A, B, N, K = 0x400, 0x800, 128, 2
KERNEL = {0x0, 0x1, 0x10}  # start-info (window number), text, vCPU 0's stack (puts)
# Window 0 also has the kernel's boot (xen_init, balloon_init): the rest of its image (gfns
# 2, 3, 0x0c: text, data, IDT), shared_info (0x0e) and the hypercall page (0x0f).
BOOT = {0x2, 0x3, 0xC, 0xE, 0xF}
GFNS = 4097  # 16 MiB of RAM around the shared_info hole at 0x0e (emu/domain_build.py)
BUCKETS = 32  # of 128 or 129 gfns; A is in bucket 7-8, B in 15-16, KERNEL and BOOT in 0


def expected(window: int) -> set[int]:
    phase = window // K
    if phase >= 3:
        return set() if window > 3 * K else {0x0, 0x1}  # reads the number, then halts
    base = B if phase == 1 else A
    return set(range(base, base + N)) | KERNEL | (BOOT if window == 0 else set())


def test_phases_exact_counts_idle_ages_and_picture(tmp_path):
    m = new_machine()
    try:
        d = create(m, "ph", f"phases:a={A:#x},b={B:#x},pages={N},k={K}", memory=16)
        assert wait_for(lambda: "phases window 0" in console_lines(d), timeout=60)
        series = Series(BUCKETS, 1.0)
        for w in range(3 * K + 3):
            s = scan_domain(m, d)
            assert set(np.flatnonzero(s.window).tolist()) == expected(w), w
            smp = sample(m, BUCKETS, reset=True)
            (one,) = smp["domains"]
            assert (one["seq"], one["window"]) == (w, len(expected(w)))
            edges = bucket_edges(GFNS, BUCKETS)
            want = np.zeros(BUCKETS, dtype=np.int64)
            for g in expected(w):
                want[np.searchsorted(edges, g, side="right") - 1] += 1
            assert one["bucket_window"] == want.tolist()
            assert one["bucket_owned"] == np.diff(edges).tolist()
            series.add(smp)
            if w + 1 < 3 * K:
                assert wait_for(lambda w=w: f"phases window {w + 1}" in console_lines(d), 60)
            else:
                wait_for(lambda: False, timeout=0.3)  # halted: nothing may run
        # Idle ages in the last window sampled (8; age = 8 - the window of the last
        # access): A and the stack last in window 5 (3), GFNs 0-1 in 6 (2): bucket 2-3;
        # B last in window 3 (5): bucket 4-7; BOOT in window 0 (8): bucket 8-15; nothing
        # else was ever touched.
        last = one["idle"]
        n_boot = len(BOOT)
        assert last == [0, 0, N + 3, N, n_boot, 0, GFNS - 2 * N - 3 - n_boot]
        out = str(tmp_path / "s.npz")
        series.save(out)
        data = load(out)
        assert str(data["format"]) == FORMAT
        assert data["window"][:, 0].tolist() == [len(expected(w)) for w in range(3 * K + 3)]
        assert data["idle"][-1, 0].tolist() == last
        png = str(tmp_path / "s.png")
        (box,) = draw(data, png)
        _check_picture(png, box, data)
    finally:
        m.shutdown()


def _check_picture(png: str, box: dict, data: dict) -> None:
    """Coloured (non-white) pixels of the heat map only where a bucket of the interval had
    accessed pages, and every such bucket coloured at its centre."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[:, :, :3]
    x0, y0, x1, y1 = box["box"]
    t = data["t"]
    edges = plot_edges(data)
    span = edges[-1] - edges[0]
    lit = {(i, b) for i in range(t.size) for b in range(BUCKETS) if data["bucket_window"][i, 0, b]}
    assert lit  # the phases drew something

    def cell(px: float, py: float) -> tuple[int, int]:
        tt = edges[0] + (px - x0) / (x1 - x0) * span
        i = int(np.searchsorted(edges, tt, side="right")) - 1
        return i, int((y1 - py) / (y1 - y0) * BUCKETS)

    coloured = ~(img > 0.99).all(axis=2)
    m = 3  # the axes' frame (anti-aliased) is not the heat map
    ys, xs = np.nonzero(coloured[int(y0) + m : int(y1) - m, int(x0) + m : int(x1) - m])
    for py, px in zip(ys + int(y0) + m + 0.5, xs + int(x0) + m + 0.5, strict=True):
        near = {cell(px + dx, py + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
        assert near & lit, (px, py, near)
    for i, b in lit:
        px = x0 + ((edges[i] + edges[i + 1]) / 2 - edges[0]) / span * (x1 - x0)
        py = y1 - (b + 0.5) / BUCKETS * (y1 - y0)
        assert coloured[int(py), int(px)], (i, b)


@pytest.mark.parametrize(
    "workload,error",
    [
        ("phases:pages=4", "workload: phases needs a=GFN"),
        ("phases:a=0x100,pages=4", "workload: phases needs b=GFN"),
        ("phases:a=0x100,b=0x200", "workload: phases needs pages=N"),
        ("phases:a=0x100,b=0x200,pages=4,k=0", "workload: phases: k must be at least 1"),
        ("phases:a=0x100,b=0x200,pages=4,x=1", "workload: phases: unknown parameter 'x'"),
        (
            "phases:a=0x100,b=0xffe,pages=4",
            "workload phases does not fit: b pages 0xffe-0x1001 outside the arena 0x100-0x1000",
        ),
        (
            "phases:a=0x80,b=0x200,pages=4",
            "workload phases does not fit: a pages 0x80-0x83 outside the arena 0x100-0x1000",
        ),
    ],
)
def test_phases_errors(workload, error):
    from emu.host import DomainSpec
    from emu.workload import validate_workload

    assert validate_workload(DomainSpec(name="p", memory=16, workload=workload)) == error


@pytest.mark.parametrize("n", [0, 5, 31, 32, 64, 1000, 4096, 4099])
def test_bucket_counts_equal_a_loop(n):
    from keyhandlers.access import bucket_counts, bucket_edges

    flags = np.random.default_rng(n).random(n) < 0.3
    e = bucket_edges(n, 32)
    want = [int(np.count_nonzero(flags[e[b] : e[b + 1]])) for b in range(32)]
    assert bucket_counts(flags, e).tolist() == want
    assert sum(want) == int(np.count_nonzero(flags))


def test_series_columns_follow_domains(tmp_path):
    """A domain that leaves is absent (zeros, present False) from then on; a domain id
    reused under another name is another column."""

    def dom(domid: int, name: str, window: int) -> dict:
        return {"domid": domid, "name": name, "gfns": 4, "pages": 4, "accessed": window,
                "dirty": 0, "window": window, "never": 4 - window, "idle": [window] * 7,
                "seq": 0, "bucket_window": [window, 0], "bucket_owned": [2, 2]}  # fmt: skip

    s = Series(2, 0.5)
    s.add({"time_ns": 1_000_000_000, "domains": [dom(1, "a", 1), dom(2, "b", 2)]})
    s.add({"time_ns": 1_500_000_000, "domains": [dom(2, "b", 1)]})
    s.add({"time_ns": 2_000_000_000, "domains": [dom(1, "c", 2), dom(2, "b", 0)]})
    path = str(tmp_path / "s.npz")
    s.save(path)
    d = load(path)
    assert d["names"].tolist() == ["a", "b", "c"] and d["domids"].tolist() == [1, 2, 1]
    assert d["present"].tolist() == [[True, True, False], [False, True, False],
                                     [False, True, True]]  # fmt: skip
    assert d["window"].tolist() == [[1, 2, 0], [0, 1, 0], [0, 0, 2]]
    assert d["t"].tolist() == [1.0, 1.5, 2.0] and float(d["t_start"]) == 0.5
    assert d["bucket_window"][:, :, 0].tolist() == [[1, 2, 0], [0, 1, 0], [0, 0, 2]]
