"""RFC 2217 end to end: pyserial and labgrid against a served host (the protocol itself is
tested in-process in tests/xenconsole/test_rfc2217_protocol.py)."""

from __future__ import annotations

import struct
import time

import pytest
import serial
from console_hosts import host_only

from xenconsole.testing import serve

XEN_SWITCH = b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"
PROMPT = b"root@dom0:~# "


def read_until(port, marker: bytes, timeout: float = 15.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"{marker!r} not seen; last bytes {buf[-300:]!r}")
        buf += port.read(4096)
    return buf


@pytest.mark.timeout(60)
def test_pyserial_reaches_dom0_switches_to_xen_and_reads_h(tmp_path) -> None:
    with serve(*host_only(tmp_path), rfc2217=True, tcp=False, wait=True) as host:
        url = host.urls["rfc2217"]
        assert url.startswith("rfc2217://127.0.0.1:")
        port = serial.serial_for_url(url, baudrate=115200, timeout=0.2)
        try:
            # The host powers on at this first client, which sees the boot from its start.
            boot = read_until(port, PROMPT)
            assert boot.startswith(b" __  __            _  _    ____  ____    ___\r\n")
            assert b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times" in boot
            port.baudrate = 9600  # raises SerialException unless the server answers
            settings = port._rfc2217_port_settings["baudrate"]
            assert settings.active and settings.value == struct.pack("!I", 9600)
            port.write(b"\x01\x01\x01")
            read_until(port, XEN_SWITCH)
            port.write(b"h")
            out = read_until(port, b"=> show this message\r\n")
            assert b"(XEN) 'h' pressed -> showing installed handlers\r\n" in out
            assert b"(XEN)  key 'h' (ascii '68') => show this message\r\n" in out
            assert (port.cts, port.dsr, port.ri, port.cd) == (True, True, False, True)
            port.send_break(0.05)
            port.write(b"\x01\x01\x01")
            read_until(port, b"*** Serial input to DOM0")
            port.write(b"xl list\r")
            out = read_until(port, PROMPT)
            assert b"Domain-0                                     0" in out
        finally:
            port.close()


@pytest.mark.timeout(60)
def test_labgrid_serial_driver_runs_xl_list(tmp_path) -> None:
    pytest.importorskip("labgrid")
    from labgrid import Target
    from labgrid.driver import SerialDriver
    from labgrid.resource import NetworkSerialPort

    with serve(*host_only(tmp_path), rfc2217=True, tcp=False) as host:
        addr, port = host.address("rfc2217")
        target = Target("xenhost")
        NetworkSerialPort(target, name=None, host=addr, port=port, speed=115200, protocol="rfc2217")
        drv = SerialDriver(target, name=None)
        target.activate(drv)
        try:
            drv.sendline("")
            drv.expect(PROMPT, timeout=15)
            drv.sendline("xl list")
            _i, before, _m, _a = drv.expect(PROMPT, timeout=15)
            lines = before.split(b"\r\n")
            assert lines[0] == b"xl list"
            assert lines[1].startswith(b"Name ") and lines[1].endswith(b"Time(s)")
            assert lines[2].startswith(b"Domain-0 ")
        finally:
            target.deactivate(drv)
