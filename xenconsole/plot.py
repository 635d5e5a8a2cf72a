"""`xenconsole plot IN -o FILE.png|FILE.svg`: pictures of a `xenconsole record` series.

One figure, top to bottom:

* per domain, a heat map: time on x (seconds since recording began), guest frame number
  on y (the domain's P2M, bucketed as recorded), colour = the fraction of the bucket's owned
  pages accessed in that interval (white: none; then the `viridis` map, dark = few, yellow =
  all), as damo's heatmap does for DAMON;
* the working-set size over time: pages accessed per interval, in MiB, one line per domain;
* the idle-age histogram at the last sample: per domain, its pages by windows since their
  last access (key `U`'s idle line: 0, 1, 2-3, 4-7, 8-15, 16+, never).

Needs matplotlib (`pip install xenconsole[plot]`); drawn with the Agg backend, no display.
`draw()` returns where each heat map landed in the image (pixels), for readers of the image.
"""

from __future__ import annotations

import numpy as np

from xenconsole.record import IDLE_NAMES, load

HEAT_CMAP = "viridis"
DPI = 100
MESH_CELLS = 250_000  # above this, a heat map is drawn as an image (see _heat)
MAX_COLUMNS = 4000


class PlotError(ValueError):
    """One line for the user."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plot needs matplotlib: pip install 'xenconsole[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fractions(data: dict, col: int) -> np.ndarray:
    """[B, T] fraction of each bucket's owned pages accessed per interval (NaN: none owned
    or the domain absent; 0: none accessed)."""
    win = data["bucket_window"][:, col, :].astype(np.float64)
    own = data["bucket_owned"][:, col, :].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(own > 0, win / np.maximum(own, 1), np.nan)
    f[~data["present"][:, col]] = np.nan
    return f.T


def edges(data: dict) -> np.ndarray:
    """Interval boundaries in seconds since recording began: sample i covers
    edges[i]..edges[i+1] (t_start, then each sample's time)."""
    t = data["t"]
    t0 = float(data["t_start"]) if "t_start" in data else float(t[0] - data["interval_s"])
    return np.concatenate(([0.0], t - t0))


def draw(data: dict, path: str, width: float = 10.0) -> list[dict]:
    """Draw the figure into `path` (.png or .svg); per heat map: domid, name and its pixel
    box (x0, y0, x1, y1 from the image's top left), gfns and buckets."""
    if not path.endswith((".png", ".svg")):
        raise PlotError(f"{path}: the output must be a .png or .svg file")
    plt = _pyplot()
    from matplotlib import colors

    t, names, domids = data["t"], data["names"], data["domids"]
    D = int(domids.size)
    if not t.size or not D:
        raise PlotError("the series has no samples of any domain")
    xs = edges(data)
    heights = [2.0] * D + [1.6, 1.6]
    fig, axes = plt.subplots(D + 2, 1, figsize=(width, sum(heights) + 0.6 * (D + 2)),
                             gridspec_kw={"height_ratios": heights}, dpi=DPI,
                             layout="constrained")  # fmt: skip
    cmap = plt.get_cmap(HEAT_CMAP).with_extremes(bad="white")
    norm = colors.Normalize(vmin=0.0, vmax=1.0)
    boxes = []
    for col in range(D):
        ax = axes[col]
        f = fractions(data, col)
        g = int(data["gfns"][col])
        _heat(ax, f, xs, g, cmap, norm)
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(0, g)
        ax.set_ylabel("gfn")
        step = 1 << max(0, (max(g, 4) // 4).bit_length() - 1)  # a power of two: round hex
        ticks = list(range(0, g + 1, step))
        ax.set_yticks(ticks, [f"{t:#x}" for t in ticks])
        ax.set_title(f"d{domids[col]} {names[col]}: fraction of each gfn bucket accessed",
                     fontsize=9, loc="left")  # fmt: skip
        boxes.append({"domid": int(domids[col]), "name": str(names[col]), "ax": ax,
                      "gfns": g, "buckets": f.shape[0]})  # fmt: skip
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=list(axes[:D]), fraction=0.02, pad=0.01, label="accessed")
    _working_set(axes[D], data, xs)
    _idle(axes[D + 1], data)
    axes[D].set_xlabel("seconds since recording began")
    fig.savefig(path, dpi=DPI)
    height = fig.get_size_inches()[1] * DPI
    for b in boxes:
        x0, y0, x1, y1 = b.pop("ax").get_window_extent().extents
        b["box"] = (x0, height - y1, x1, height - y0)
    plt.close(fig)
    return boxes


def _heat(ax, f: np.ndarray, xs: np.ndarray, g: int, cmap, norm) -> None:
    """One heat map. Up to MESH_CELLS cells: a mesh with each interval's true edges. More
    (an hour is 3600 x 256 per domain): an image of uniform columns, each showing the
    interval that covers its middle (nearest), which draws in a fraction of the time."""
    if f.size <= MESH_CELLS:
        shown = np.ma.masked_where(~(f > 0), f)  # 0 and NaN: white
        ax.pcolormesh(xs, np.linspace(0, g, f.shape[0] + 1), shown, cmap=cmap, norm=norm,
                      shading="flat", rasterized=True)  # fmt: skip
        return
    cols = min(f.shape[1], MAX_COLUMNS)
    mid = xs[0] + (np.arange(cols) + 0.5) * (xs[-1] - xs[0]) / cols
    pick = np.clip(np.searchsorted(xs, mid, side="right") - 1, 0, f.shape[1] - 1)
    img = f[:, pick]
    ax.imshow(np.ma.masked_where(~(img > 0), img), cmap=cmap, norm=norm, aspect="auto",
              origin="lower", interpolation="nearest", extent=(xs[0], xs[-1], 0, g))  # fmt: skip


def _working_set(ax, data: dict, xs: np.ndarray) -> None:
    for col in range(data["domids"].size):
        present = data["present"][:, col]
        mib = np.where(present, data["window"][:, col] * 4 / 1024, np.nan)
        ax.step(xs[1:], mib, where="pre", label=f"d{data['domids'][col]} {data['names'][col]}")
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylabel("MiB")
    ax.set_title("working set: pages accessed per interval", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="upper right")


def _idle(ax, data: dict) -> None:
    D = data["domids"].size
    x = np.arange(len(IDLE_NAMES))
    w = 0.8 / max(D, 1)
    for col in range(D):
        rows = np.flatnonzero(data["present"][:, col])
        if not rows.size:
            continue
        counts = data["idle"][rows[-1], col]
        ax.bar(x + (col - (D - 1) / 2) * w, counts * 4 / 1024, w,
               label=f"d{data['domids'][col]} {data['names'][col]}")  # fmt: skip
    ax.set_xticks(x, [f"{n}" for n in IDLE_NAMES])
    ax.set_xlabel("windows since last access (idle age), at the last sample")
    ax.set_ylabel("MiB")
    ax.set_title("idle-age histogram", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="upper right")


def main(args) -> int:
    """The `plot` subcommand (options parsed by xenconsole/cli.py)."""
    try:
        data = load(args.input)
    except ValueError as e:
        raise PlotError(str(e)) from None
    draw(data, args.output)
    return 0
