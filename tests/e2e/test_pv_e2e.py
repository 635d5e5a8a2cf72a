"""End to end: XTF's pv64 example created by `xl create -c` typed on the serial line of a
served host. Xen's formats: drivers/char/console.c:798-810 (line buffer), :1068-1078
(`(d%d) ` prefix); the console copy comes from the PV ring (emu/pv/event.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pv_helpers import xtf_tree


@pytest.fixture
def xtf() -> Path:
    """XTF built once per process (skips without ../shared/xtf)."""
    return xtf_tree()


@pytest.mark.timeout(600)
def test_xl_create_on_the_serial_line(xtf, tmp_path):
    """`xl create -c FILE.cfg` typed on the serial line: the `(d1)` lines from Xen, then
    `xl console`'s copy from the PV ring, and the prompt once the domain is gone."""
    from xenconsole.testing import serve

    cfg = tmp_path / "host.toml"
    cfg.write_text('[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "256M"\n')
    xcfg = xtf / "tests" / "example" / "test-pv64-example.cfg"
    with serve("--config", str(cfg)) as host:
        s = socket.create_connection(host.address("tcp"))
        buf = bytearray()

        def wait(pattern: bytes, timeout: float = 60) -> None:
            end = time.monotonic() + timeout
            s.settimeout(0.2)
            while pattern not in buf and time.monotonic() < end:
                try:
                    buf.extend(s.recv(65536))
                except TimeoutError:
                    pass
            assert pattern in buf, bytes(buf[-1500:])

        wait(b"root@dom0:~# ")
        mark = len(buf)
        s.sendall(f"xl create -c {xcfg}\r".encode())
        wait(b"Test result: SUCCESS\r\nroot@dom0:~# ")
        text = buf[mark:].decode("latin-1").replace("\r\n", "\n")
        assert f"Parsing config from {xcfg}\n" in text
        xen = [ln for ln in text.split("\n") if ln.startswith("(d1) ")]
        assert xen == [
            "(d1) --- Xen Test Framework ---",
            "(d1) Environment: PV 64bit (Long mode 4 levels)",
            "(d1) Hello World",
            "(d1) Test result: SUCCESS",
        ]
        plain = [
            ln
            for ln in text.split("\n")
            if ln and not ln.startswith(("(", "root@", "Pars", "xl create"))
        ]
        assert plain == [ln[5:] for ln in xen]
        mark = len(buf)
        s.sendall(b"xl list\r")
        wait(b"root@dom0:~# ", 10)
        assert b"test-pv64-example" not in buf[mark:]
        s.close()
