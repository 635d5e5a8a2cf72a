"""A booted machine with its dom0 shell, driven through the real console input path."""

from __future__ import annotations

from emu.boot import boot
from emu.host import HostConfig
from emu.machine import Machine
from keyhandlers.dispatch import XenKeyInput
from xenconsole.dom0.fs import Dom0Fs
from xenconsole.dom0.shell import PROMPT, Dom0Shell

P = PROMPT.encode()


class Host:
    """A booted machine with its dom0 shell; `type()` returns the serial output it caused."""

    def __init__(self) -> None:
        self.machine = Machine(HostConfig(memory=256 << 20, cpus=2, dom0_mem=128 << 20))
        self.out = bytearray()
        con = self.machine.console
        con.sinks.append(self.out.extend)
        con.xen_rx = XenKeyInput(self.machine)
        self.shell = Dom0Shell(self.machine, con.serial_write, Dom0Fs("/"))
        con.dom0_rx = self.shell.rx
        for _ in boot(self.machine):
            pass
        self.shell.prompt()

    def type(self, data: bytes) -> bytes:
        self.out.clear()
        self.machine.console.serial_rx(data)
        return bytes(self.out)

    def cmd(self, line: str) -> str:
        """Run one line; return its output (echo and the next prompt removed)."""
        raw = self.type(line.encode() + b"\r")
        echo = line.encode() + b"\r\n"
        assert raw.startswith(echo), raw[:200]
        assert raw.endswith(P), raw[-200:]
        return raw[len(echo) : -len(P)].decode()

    def status(self) -> int:
        return int(self.cmd("echo $?"))
