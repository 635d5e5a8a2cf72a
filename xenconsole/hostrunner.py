"""Boot the host, wire its serial line to the console hub, and boot it again after `R`."""

from __future__ import annotations

import gc
import sys
import traceback

from emu.boot import boot
from emu.host import HostConfig
from emu.machine import Machine
from keyhandlers.dispatch import XenKeyInput
from xenconsole.dom0.shell import Dom0Shell
from xenconsole.hub import Hub

BOOT_STEP_DELAY = 0.02
REBOOT_DELAY = 0.05  # machine_restart() is at once; just let the 'R' line reach the clients

DOM0_KERNEL_LOG = """\
[    0.000000] Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)
[    0.000000] Command line: placeholder root=/dev/xvda1 ro console=hvc0
[    0.000000] Booting paravirtualized kernel on Xen
[    0.000000] Xen version: 4.22.0 (preserve-AD)
[    0.412345] xen:events: Using FIFO-based ABI
[    1.203456] xen_mem: Initialising balloon driver.
[    2.345678] systemd[1]: Hostname set to <dom0>.

Debian GNU/Linux 12 dom0 hvc0

"""


class HostRunner:
    """Owns the machine and its console wiring; survives `R` by booting a fresh machine.

    `wait`: power on when the first client attaches (else at `start()`)."""

    def __init__(self, reactor, host: HostConfig, wait: bool = True, log=None) -> None:
        self.reactor = reactor
        self.host = host
        self.wait = wait
        self.hub = Hub(reactor, log)
        self.hub.on_input = self._input
        self.machine: Machine | None = None
        self.shell: Dom0Shell | None = None
        self._boot_call = None
        self._reboot_call = None
        self._new_machine()

    def _new_machine(self) -> None:
        machine = Machine(self.host)
        machine.console.sinks.append(self.hub.sink)
        machine.console.xen_rx = XenKeyInput(machine)
        self.shell = Dom0Shell(machine, machine.console.serial_write)
        machine.console.dom0_rx = self.shell.rx
        machine.reboot_hooks.append(self._reboot_requested)
        self.machine = machine

    def _input(self, data: bytes) -> None:
        if self.machine is None:
            return
        try:
            self.machine.console.serial_rx(data)
        except Exception:  # keep serving; the trace goes to the server's stderr only
            traceback.print_exc(file=sys.stderr)

    def start(self) -> None:
        if self.wait:
            self.hub.on_first_attach = self.power_on
        else:
            self.power_on()

    def power_on(self) -> None:
        gen = boot(self.machine)
        self._step(gen, self.machine)

    def _step(self, gen, machine) -> None:
        if machine is not self.machine:
            return
        try:
            next(gen)
        except StopIteration:
            self._boot_dom0(machine)
            return
        self._boot_call = self.reactor.callLater(BOOT_STEP_DELAY, self._step, gen, machine)

    def _boot_dom0(self, machine) -> None:
        machine.console.serial_write(DOM0_KERNEL_LOG.replace("\n", "\r\n").encode())
        self.shell.prompt()
        start_domains = getattr(machine, "start_config_domains", None)
        if start_domains is not None:
            start_domains(self.host.domains)

    def _reboot_requested(self) -> None:
        # machine_restart() does not return: a second `R` before the restart changes nothing.
        if self._reboot_call is not None and self._reboot_call.active():
            return
        self._reboot_call = self.reactor.callLater(REBOOT_DELAY, self._reboot)

    def _reboot(self) -> None:
        old = self.machine
        self.machine = None
        self.shell = None  # the old dom0 shell works on the old machine
        if self._boot_call is not None and self._boot_call.active():
            self._boot_call.cancel()
        self._boot_call = None  # a DelayedCall keeps its arguments: the old machine
        if old is not None:
            old.shutdown()  # every Uc released, the RAM's pages back to the OS
            old.console.sinks.clear()
            old.reboot_hooks.clear()
            old.console.xen_rx = lambda c: None
            old.console.dom0_rx = lambda b: None
            del old
            # What is left of the old machine (frame table, M2P, access record, the shell)
            # is held only by its own reference cycles (subsystems point back at it): free
            # it now, once per reboot, rather than at some later collection.
            gc.collect()
        self._new_machine()
        self.power_on()

    def stop(self) -> None:
        for call in (self._boot_call, self._reboot_call):
            if call is not None and call.active():
                call.cancel()
        if self.machine is not None:
            self.machine.shutdown()
