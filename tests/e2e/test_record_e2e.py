"""`xenconsole record` and `xenconsole plot` against a real `xenconsole serve` (control
channel request `access`): a fixed-duration recording, a recording stopped by Ctrl-C
(SIGINT) with everything so far readable, nothing typed on the serial line, PNG and SVG
output, and one error line for bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xenconsole.record import FORMAT, load
from xenconsole.testing import serve

XC = [sys.executable, "-m", "xenconsole"]
CONFIG = """\
[host]
memory = "1G"
cpus = 2
dom0_mem = "256M"

[[domain]]
name = "busy"
memory = 32
vcpus = 1
workload = "random:ws=1024"

[[domain]]
name = "ph"
memory = 16
vcpus = 1
workload = "phases:a=0x400,b=0x800,pages=128,k=2"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    top = tmp_path_factory.mktemp("record")
    cfg = top / "host.toml"
    cfg.write_text(CONFIG)
    root = top / "dom0"
    root.mkdir()
    with serve("--config", str(cfg), "--dom0-root", str(root), "--control",
               str(top / "c.sock")) as host:  # fmt: skip
        host.wait_booted()
        yield host, top


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*XC, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.timeout(300)
def test_record_for_a_duration_then_plot(served):
    host, top = served
    out = str(top / "a.npz")
    with host.console("tcp", timeout=60) as con:
        r = _run("record", "--control", host.control, "--interval", "0.5", "--duration", "3",
                 "--buckets", "64", "-o", out)  # fmt: skip
        assert r.returncode == 0, r.stderr
        # Not a byte of the recording on the serial line (U and Z print nothing there).
        seen = con.run("true", timeout=60)
        assert "pages=" not in seen and "window reset" not in seen
    data = load(out)
    T = data["t"].size
    assert str(data["format"]) == FORMAT and T >= 2
    assert r.stderr == f"{T} samples of 2 domains written to {out}\n"
    assert sorted(data["names"].tolist()) == ["busy", "ph"]
    assert data["bucket_window"].shape == (T, 2, 64) and data["idle"].shape == (T, 2, 7)
    busy = data["names"].tolist().index("busy")
    assert data["present"].all()
    # The random guest reads 1024 arena pages over and over: every interval sees them all.
    assert (data["window"][:, busy] >= 1024).all()
    assert (data["bucket_window"].sum(axis=2) == data["window"]).all()
    assert (data["bucket_owned"].sum(axis=2) == data["pages"]).all()
    assert (np.diff(data["t"]) > 0).all() and data["t_start"] < data["t"][0]
    for name in ("p.png", "p.svg"):
        r = _run("plot", out, "-o", str(top / name))
        assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (top / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (top / "p.svg").read_bytes()[:1000]


@pytest.mark.timeout(300)
def test_ctrl_c_keeps_everything_so_far(served):
    host, top = served
    out = str(top / "b.npz")
    proc = subprocess.Popen([*XC, "record", "--control", host.control, "--interval", "0.3",
                             "-o", out], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(3)  # a few samples (none is written before the end: no checkpoint yet)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    data = load(out)
    T = data["t"].size
    assert T >= 1 and err.endswith(f"{T} samples of 2 domains written to {out}\n")
    assert not os.path.exists(out + ".tmp")


@pytest.mark.timeout(120)
def test_access_request_errors(served):
    from xenconsole.xlclient import Channel, connect

    host, _ = served
    ch = Channel(connect(host.control))
    try:
        ch.send({"op": "access", "buckets": 0})
        assert ch.recv() == {"error": "control: access: buckets must be 1..4096, got 0"}
        ch.send({"op": "access", "reset": "yes"})
        assert ch.recv() == {"error": "control: access: buckets is an integer, reset a boolean"}
        ch.send({"op": "access", "buckets": 4, "reset": False})  # a peek: no Z
        got = ch.recv()["access"]
        assert sorted(d["name"] for d in got["domains"]) == ["busy", "ph"]
        assert all(len(d["bucket_window"]) == 4 for d in got["domains"])
    finally:
        ch.close()


@pytest.mark.timeout(120)
def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    r = _run("plot", str(bad), "-o", str(tmp_path / "x.png"))
    assert (r.returncode, r.stderr) == (
        2, f"xenconsole: error: {bad} is not a xenconsole access series ({FORMAT})\n")  # fmt: skip
    r = _run("plot", str(bad), "-o", str(tmp_path / "x.jpg"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    sock = str(tmp_path / "none.sock")
    r = _run("record", "--control", sock, "-o", str(tmp_path / "r.npz"))
    assert (r.returncode, r.stderr) == (
        2, f"xenconsole: error: cannot connect to {sock}: No such file or directory\n")  # fmt: skip
    r = _run("record", "--control", sock, "--interval", "0", "-o", str(tmp_path / "r.npz"))
    assert (r.returncode, r.stderr) == (
        2, "xenconsole: error: --interval and --duration must be positive\n")  # fmt: skip


@pytest.mark.timeout(180)
def test_progress_line_on_a_terminal(served):
    import pexpect

    host, top = served
    out = str(top / "tty.npz")
    child = pexpect.spawn(sys.executable, ["-m", "xenconsole", "record", "--control",
                          host.control, "--interval", "0.3", "--duration", "1.5", "-o", out],
                          timeout=60, encoding="utf-8")  # fmt: skip
    try:
        child.expect(r"\rrecording: 1 samples, \d+ s, 2 domains, working set \d+\.\d MiB  ")
        child.expect(r"\n(\d+) samples of 2 domains written to ")
        n = int(child.match.group(1))
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0 and load(out)["t"].size == n
