"""Shared by the PV tests: XTF's microkernels (built once per test process), a small host,
running a domain to its end."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from emu.boot import boot_sync
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
XTF = SHARED / "xtf"
XTF_MISSING = "../shared/xtf (the Xen Test Framework) is not present"
_built: list[Path] = []


def xtf_tree() -> Path:
    """XTF built with ../shared/xtf-build.sh (once per process); skips the test without XTF.
    XENCONSOLE_XTF_DIR names a tree xtf-build.sh already built (saves the build)."""
    if not (XTF.is_dir() and (SHARED / "xtf-build.sh").is_file()):
        pytest.skip(XTF_MISSING)
    prebuilt = os.environ.get("XENCONSOLE_XTF_DIR")
    if prebuilt and not _built and (Path(prebuilt) / "tests").is_dir():
        _built.append(Path(prebuilt))
    if not _built:
        dest = Path(tempfile.mkdtemp(prefix="xtf-"))
        atexit.register(shutil.rmtree, dest, True)
        r = subprocess.run(
            [str(SHARED / "xtf-build.sh"), str(dest)], capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        _built.append(dest)
    return _built[0]


def kernel(xtf: Path, name: str) -> str:
    return str(xtf / "tests" / name / f"test-pv64-{name}")


def small_machine() -> tuple[Machine, list[str]]:
    m = boot_sync(Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20)))
    assert m.pv.xen is not None  # Xen's PV frames, kept from the first PV domain on
    out: list[str] = []
    m.console.sinks.append(lambda b: out.append(b.decode("latin-1")))
    return m, out


def run_to_end(m: Machine, spec: DomainSpec, timeout: float = 60):
    d = m.create_domain(spec)
    end = time.monotonic() + timeout
    while d.domid in m.domains and time.monotonic() < end:
        time.sleep(0.02)
    assert d.domid not in m.domains, "the guest did not finish"
    return d


def serial_lines(out: list[str]) -> list[str]:
    return "".join(out).replace("\r\n", "\n").split("\n")
