"""`xenconsole record [--control PATH] [--interval S] [--duration S] [--buckets B] -o OUT`.

Samples a running host over its control channel (xenconsole/control.py, request `access`:
key `U` for every guest as numbers, then `Z`; never a byte on the serial line) every
`--interval` seconds (default 1) until `--duration` (default: until Ctrl-C), and writes a
time series to OUT, a numpy `.npz` (`numpy.load(OUT)`), format `xenconsole-access-series/1`:

    format        str: "xenconsole-access-series/1"
    interval_s    float: the requested interval; buckets  int: B
    t_start       float: when recording began (its first Z), seconds since the host
                  powered on (NOW())
    t             float64[T]: sample time, same clock; the interval of sample i is
                  t[i-1]..t[i] (the first: t_start..t[0])
    domids        int64[D], names str[D], gfns int64[D]: the domains seen (a domain id
                  reused under another name is another column); gfns = P2M length
    present       bool[T, D]: the domain was sampled at t[i] (else its row is zeros)
    pages accessed dirty window never   int64[T, D]: key U's summary line at t[i]
                  (window = pages accessed in the interval; accessed, dirty: lifetime)
    seq           int64[T, D]: the window's number (keys Z the domain had before it)
    idle          int64[T, D, 7]: U's idle line, buckets 0 1 2-3 4-7 8-15 16+ never
    bucket_window uint32[T, D, B]: per gfn bucket, pages accessed in the interval
    bucket_owned  uint32[T, D, B]: per gfn bucket, pages the domain owns
                  (bucket b of a domain covers gfns ceil(b*G/B)..ceil((b+1)*G/B)-1)

The file is rewritten (to OUT.tmp, then renamed over OUT) every `--checkpoint` seconds and
at the end, so OUT is always a complete, readable series. On a terminal a progress line
shows the samples taken. Ctrl-C (or SIGTERM) stops cleanly: the samples so far are written.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from xenconsole.xlclient import Channel, ClientError, connect

FORMAT = "xenconsole-access-series/1"
IDLE_NAMES = ("0", "1", "2-3", "4-7", "8-15", "16+", "never")
CHECKPOINT_S = 300.0  # the whole file is rewritten: 0.7 s of CPU for an hour of 5 domains
SCALARS = ("pages", "accessed", "dirty", "window", "never", "seq")


class Sampler:
    """The control channel's `access` request."""

    def __init__(self, ch: Channel, buckets: int) -> None:
        self.ch = ch
        self.buckets = buckets

    def sample(self, reset: bool = True) -> dict:
        self.ch.send({"op": "access", "buckets": self.buckets, "reset": reset})
        msg = self.ch.recv()
        if msg is None:
            raise ClientError("the server closed the control connection")
        if "error" in msg:
            raise ClientError(msg["error"])
        return msg["access"]


@dataclass
class Series:
    """Samples in memory, written as the `.npz` above."""

    buckets: int
    interval_s: float
    t_start: float | None = None  # None: one interval before the first sample
    t: list[float] = field(default_factory=list)
    cols: dict[tuple[int, str], int] = field(default_factory=dict)
    gfns: list[int] = field(default_factory=list)
    rows: list[dict[int, dict]] = field(default_factory=list)  # per sample: column -> data

    def add(self, sample: dict) -> None:
        row: dict[int, dict] = {}
        for d in sample["domains"]:
            key = (int(d["domid"]), str(d["name"]))
            col = self.cols.setdefault(key, len(self.cols))
            if col == len(self.gfns):
                self.gfns.append(0)
            self.gfns[col] = int(d["gfns"])
            row[col] = d
        self.t.append(sample["time_ns"] / 1e9)
        self.rows.append(row)

    def arrays(self) -> dict[str, np.ndarray]:
        T, D, B = len(self.t), len(self.cols), self.buckets
        keys = sorted(self.cols, key=self.cols.get)
        a = {
            "format": np.array(FORMAT),
            "interval_s": np.array(float(self.interval_s)),
            "buckets": np.array(B),
            "t_start": np.array(
                self.t_start
                if self.t_start is not None
                else (self.t[0] if self.t else 0.0) - self.interval_s
            ),
            "t": np.array(self.t, dtype=np.float64),
            "domids": np.array([k[0] for k in keys], dtype=np.int64),
            "names": np.array([k[1] for k in keys], dtype=str),
            "gfns": np.array(self.gfns, dtype=np.int64),
            "present": np.zeros((T, D), dtype=bool),
            "idle": np.zeros((T, D, len(IDLE_NAMES)), dtype=np.int64),
            "bucket_window": np.zeros((T, D, B), dtype=np.uint32),
            "bucket_owned": np.zeros((T, D, B), dtype=np.uint32),
        }
        for k in SCALARS:
            a[k] = np.zeros((T, D), dtype=np.int64)
        for i, row in enumerate(self.rows):
            for col, d in row.items():
                a["present"][i, col] = True
                for k in SCALARS:
                    a[k][i, col] = d[k]
                a["idle"][i, col] = d["idle"]
                a["bucket_window"][i, col] = d["bucket_window"]
                a["bucket_owned"][i, col] = d["bucket_owned"]
        return a

    def save(self, path: str) -> None:
        """Write OUT.tmp, then rename it over `path`: a reader never sees half a file."""
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **self.arrays())
        os.replace(tmp, path)


def load(path: str) -> dict[str, np.ndarray]:
    """A recorded series (checked to be one); ValueError with one line otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if str(data.get("format", "")) != FORMAT:
        raise ValueError(f"{path} is not a xenconsole access series ({FORMAT})")
    return data


class _Stop(Exception):
    pass


def _on_term(signum, frame) -> None:
    raise _Stop


def record(
    sampler: Sampler,
    out: str,
    interval: float = 1.0,
    duration: float | None = None,
    checkpoint: float = CHECKPOINT_S,
    progress=None,
) -> Series:
    """Sample every `interval` s for `duration` s (None: until stopped), writing `out` every
    `checkpoint` s and at the end, also on Ctrl-C/SIGTERM or a lost server (re-raised)."""
    series = Series(sampler.buckets, interval)
    old = signal.signal(signal.SIGTERM, _on_term)
    try:
        first = sampler.sample(reset=True)  # a window starts now; what came before: not ours
        series.t_start = first["time_ns"] / 1e9
        start = time.monotonic()
        due, saved = start + interval, start
        while duration is None or due <= start + duration + 1e-9:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            series.add(sampler.sample(reset=True))
            now = time.monotonic()
            due += interval
            if due < now:  # fell behind (a loaded machine): the next tick from now
                due = now + interval
            if progress is not None:
                progress(series, now - start)
            if now - saved >= checkpoint:
                series.save(out)
                saved = now
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        series.save(out)
    return series


def _progress_line(stream):
    def show(series: Series, elapsed: float) -> None:
        last = series.rows[-1]
        ws = sum(d["window"] for d in last.values())
        stream.write(
            f"\rrecording: {len(series.t)} samples, {elapsed:.0f} s, {len(last)} domains, "
            f"working set {ws * 4 / 1024:.1f} MiB  "
        )
        stream.flush()

    return show


def main(args) -> int:
    """The `record` subcommand (options parsed by xenconsole/cli.py)."""
    if args.interval <= 0 or (args.duration is not None and args.duration <= 0):
        raise ClientError("--interval and --duration must be positive")
    ch = Channel(connect(args.control))
    tty = sys.stderr.isatty()
    try:
        series = record(
            Sampler(ch, args.buckets), args.output, args.interval, args.duration,
            args.checkpoint, _progress_line(sys.stderr) if tty else None,
        )  # fmt: skip
    finally:
        ch.close()
        if tty:
            sys.stderr.write("\n")
    doms = len(series.cols)
    sys.stderr.write(f"{len(series.t)} samples of {doms} domains written to {args.output}\n")
    return 0
