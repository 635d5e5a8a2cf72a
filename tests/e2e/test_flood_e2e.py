"""A served host answers and keeps its memory bounded while a guest floods the console
hypercall (the in-process side of the flood is tests/emu/test_flood.py)."""

from __future__ import annotations

import re

import pytest
from console_hosts import host_only
from guest_helpers import FLOOD

from xenconsole.expect import Console
from xenconsole.testing import serve


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(300)
def test_served_host_answers_and_stays_bounded_during_a_flood(tmp_path):
    # Issue 15's reproduction: 16 KiB console_io writes in a loop, then the console, q,
    # xl pause and xl destroy through a real server; its memory stays bounded meanwhile.
    src = tmp_path / "flood.S"
    src.write_text(FLOOD)
    host_files = ("--dom0-root", "/")  # the asm file is read by its host path
    with serve(*host_only(tmp_path), *host_files) as host, Console.open(host.urls["tcp"]) as con:
        args = f"'name=\"flood\"' memory=16 'workload=\"asm:{src}\"'"
        con.run(f"xl create /dev/null {args}", check=True)
        con.expect_exact("(d1) " + "A" * 127, timeout=60)
        rss = [_rss_kib(host.proc.pid)]
        for cmd in ("xl debug-keys q", "xl pause flood", "xl unpause flood", "xl debug-keys d"):
            con.run(cmd, timeout=60, check=True)
            rss.append(_rss_kib(host.proc.pid))
        out = con.run("xl list", timeout=60, check=True)
        assert re.search(r"^flood\s+1\s", out, re.M), out
        con.run("xl destroy flood", timeout=60, check=True)
        assert "flood" not in con.run("xl list", timeout=60, check=True)
        rss.append(_rss_kib(host.proc.pid))
        assert max(rss) < 300 * 1024, rss
