"""Shared by the PV tests: XTF's microkernels (built once per test process), a small host,
running a domain to its end."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
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
    """XTF built with ../shared/xtf-build.sh; skips the test without XTF.

    The build is kept in build/xtf-KEY (KEY: a digest of the build script and of XTF's
    files' names, sizes and times), so test processes after the first reuse it, and a
    changed XTF is built afresh. XENCONSOLE_XTF_DIR names a tree xtf-build.sh already built."""
    if not (XTF.is_dir() and (SHARED / "xtf-build.sh").is_file()):
        pytest.skip(XTF_MISSING)
    prebuilt = os.environ.get("XENCONSOLE_XTF_DIR")
    if prebuilt and not _built and (Path(prebuilt) / "tests").is_dir():
        _built.append(Path(prebuilt))
    if not _built:
        _built.append(_cached_build())
    return _built[0]


def _cached_build() -> Path:
    h = hashlib.sha256((SHARED / "xtf-build.sh").read_bytes())
    for path in sorted(XTF.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(XTF)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    dest = ROOT / "build" / f"xtf-{h.hexdigest()[:16]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built in place (its .cfg files name the kernel by the tree's absolute path), under a
    # lock so that two test processes never build the same tree at once.
    with open(dest.parent / ".xtf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".built").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            r = subprocess.run(
                [str(SHARED / "xtf-build.sh"), str(dest)], capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            (dest / ".built").write_text(r.stdout)
    return dest


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
