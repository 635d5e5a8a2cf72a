"""The issues' own examples, typed exactly as their texts give them."""

from __future__ import annotations

import re
import time

import pytest
from console_hosts import host_only

from xenconsole.expect import Console
from xenconsole.testing import serve


@pytest.mark.timeout(120)
def test_touch_example_from_issue_4(tmp_path):
    """Issue 4's touch guest, created the way issue 12 item 14 documents (dom0's example
    config and xl's KEY=VALUE overrides) -> `(d1) touch done 1000`."""
    with serve(*host_only(tmp_path)) as host, Console.open(host.urls["tcp"]) as con:
        con.run(
            "xl create /etc/xen/touch.cfg 'name=\"t\"' 'memory=64' "
            "'workload=\"touch:pages=1000,write=1\"'",
            check=True,
        )
        con.expect_exact("(d1) touch done 1000", timeout=60)
        listing = con.run("xl list t", check=True)
        row = listing.splitlines()[1].split()
        assert row[:4] == ["t", "1", "64", "1"]


@pytest.mark.timeout(120)
def test_web_example_from_issue_3(tmp_path):
    """A 256 MiB `web` guest owns 65536 frames; mem-set 128 balloons half back -- through
    the guest kernel's balloon driver, which watches memory/target (the only thing `xl
    mem-set` writes, libxl_mem.c:180-330), so the test waits for it."""
    with serve(*host_only(tmp_path)) as host, Console.open(host.urls["tcp"]) as con:
        con.run("xl create /etc/xen/idle.cfg 'name=\"web\"' memory=256", check=True)
        free_before = int(con.run("xl info").split("free_memory")[1].split(":")[1].split()[0])
        con.run("xl mem-set web 128", check=True)
        end = time.monotonic() + 30
        while (row := con.run("xl list web", check=True).splitlines()[1].split())[2] != "128":
            assert time.monotonic() < end, row
            time.sleep(0.2)
        free_after = int(con.run("xl info").split("free_memory")[1].split(":")[1].split()[0])
        assert free_after - free_before == 128
        con.run("xl destroy web", check=True)
        assert "web" not in con.run("xl list")


@pytest.mark.timeout(60)
def test_q_shows_the_shadow_pool_of_a_guest():
    """Issue 4: `q` gains per-vCPU lines; the shadow pool size moved to our key `F` (issue
    12: Xen's dump_domains() never prints a pool line, xen/common/keyhandler.c:290-370)."""
    from emu.boot import boot
    from emu.host import DomainSpec, HostConfig
    from emu.machine import Machine
    from keyhandlers.dispatch import handle_keypress

    out: list[bytes] = []
    m = Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20))
    m.console.sinks.append(out.append)
    try:
        for _ in boot(m):
            pass
        dom = m.create_domain(DomainSpec(name="t", memory=64, vcpus=2, workload="idle"))
        out.clear()
        handle_keypress(m, "q")
        text = b"".join(out).decode()
        tot = dom.paging.total_pages
        assert tot == 1024  # libxl's 1 MiB per vCPU + 8 KiB per MiB, at least 4 MiB
        assert "shadow pool" not in text
        assert text.count("(XEN)     paging assistance: shadowed 4-on-4\r\n") == 2
        out.clear()
        handle_keypress(m, "F")
        text = b"".join(out).decode()
        pools = re.findall(
            r"\(XEN\) audit: d1 shadow pool: total=(\d+) free=(\d+) in use=(\d+) \(4MB\)\r\n",
            text,
        )
        assert len(pools) == 1 and int(pools[0][0]) == tot
        assert 0 < int(pools[0][1]) < tot  # the guest's kernel has built some shadows
        assert int(pools[0][1]) + int(pools[0][2]) == tot
    finally:
        m.shutdown()
