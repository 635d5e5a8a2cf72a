"""What happens when a domain shuts down (emu/shutdown.py): Xen records the reason, the
domain's xl daemon acts on the config's on_poweroff / on_reboot / on_crash.

Formats: tools/xl/xl_vmcontrol.c:1051 (Waiting for domain), :1079-1081 (has shut down),
:474-476 (Action for shutdown reason code), :509-510 (needs to be cleaned up), :1132 (Done.
Rebooting now), :1137 (Done. Exiting now), :560-561 (Preserving domain); xl_parse.c:55-67
(action names), :1650-1684 (defaults and `Unknown ... action`); xl_info.c:469,500-519
(State letters, Reason-Code); xen/arch/x86/hvm/hvm.c:678,1754-1765 (triple fault ->
HVM_PARAM_TRIPLE_FAULT_REASON = SHUTDOWN_reboot).
"""

from __future__ import annotations

import os
import re

import pytest
from guest_helpers import Lines, create, new_machine, wait_for

from emu.asm import assemble
from emu.audit import audit
from emu.domctl import DomainError
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine
from emu.pv.elf import write_pv_elf

HC = 0x101000  # write_pv_elf's hypercall page
# SCHEDOP_shutdown (sched_op 29, cmd 2) with the reason in ebx (public/sched.h:158-163)
SHUTDOWN = (
    "sub rsp, 16\nmov dword ptr [rsp], ebx\nmov rdi, 2\nmov rsi, rsp\n"
    f"mov rax, {HC + 32 * 29}\ncall rax\nspin: jmp spin\n"
)
PID = os.getpid()


def pv_guest(tmp_path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.elf"
    path.write_bytes(write_pv_elf(assemble(source, 0x100000, 1 << 20)))
    return str(path)


def logger():
    lines: list[str] = []

    def write(text: str) -> None:
        assert text.endswith("\n")
        lines.append(text[:-1])

    return lines, write


def restarts_end_after_one(machine, key: str) -> list[tuple[int, str, str]]:
    """Record each created domain (domid, name, UUID); a restarted one gets `key` =
    "destroy", so a guest that always crashes restarts once, not forever."""
    born: list[tuple[int, str, str]] = []

    def created(dom) -> None:
        if born:
            setattr(dom.spec, key, "destroy")
        born.append((dom.domid, dom.name, dom.handle))

    machine.hooks.domain_created.insert(0, created)
    return born


@pytest.fixture
def machine():
    m = new_machine(memory=512 << 20)
    yield m
    m.shutdown()


@pytest.mark.timeout(60)
def test_triple_fault_is_a_reboot_and_xl_restarts_the_domain(machine, tmp_path):
    """Xen's default: the triple fault shuts the domain down with SHUTDOWN_reboot
    (hvm.c:678, :1760-1764), and xl's default on_reboot="restart" (xl_parse.c:1657-1658)
    destroys it and creates it again from the same config: new domid, same UUID."""
    lines = Lines(machine)
    log, write = logger()
    born = restarts_end_after_one(machine, "on_reboot")
    src = tmp_path / "tf.S"
    src.write_text("mov rcx, 1000\nspin: dec rcx\njnz spin\nud2\n")
    assert machine.hvm.xen is not None  # Xen's guest-entry frames, kept once made
    free = machine.free_pages()
    dom = create(machine, "tf", f"asm:{src}", memory=4, xl_log=write)
    domid, uuid = dom.domid, dom.handle
    assert wait_for(lambda: len(born) == 2, timeout=10)
    assert f"(XEN) d{domid}v0 Triple fault - invoking HVM shutdown action 1\n" in lines.text
    again_id, again_name, again_uuid = born[1]
    assert again_id > domid and again_name == "tf" and again_uuid == uuid
    assert wait_for(lambda: len(log) == 9)  # the restarted one: on_reboot="destroy"
    assert log[:5] == [
        f"Domain {domid} has shut down, reason code 1 0x1",
        "Action for shutdown reason code 1 is restart",
        f"Domain {domid} needs to be cleaned up: destroying the domain",
        "Done. Rebooting now",
        f"Waiting for domain tf (domid {again_id}) to die [pid {PID}]",
    ]
    assert log[5:] == [
        f"Domain {again_id} has shut down, reason code 1 0x1",
        "Action for shutdown reason code 1 is destroy",
        f"Domain {again_id} needs to be cleaned up: destroying the domain",
        "Done. Exiting now",
    ]
    assert wait_for(lambda: machine.domain_list()[1:] == [])
    assert machine.free_pages() == free and audit(machine) == []


@pytest.mark.timeout(60)
def test_preserve_keeps_the_shut_down_domain_until_destroyed(machine, tmp_path):
    """on_reboot="preserve": the domain stays, shut down with reason reboot (`xl list`
    State `---sr-`, xl_info.c:500-513), holding its frames, until `xl destroy`."""
    log, write = logger()
    src = tmp_path / "tf.S"
    src.write_text("ud2\n")
    assert machine.hvm.xen is not None
    free = machine.free_pages()
    dom = create(machine, "keep", f"asm:{src}", memory=4, xl_log=write, on_reboot="preserve")
    assert wait_for(lambda: dom.shutdown_code is not None)
    assert wait_for(lambda: len(log) == 3)
    assert log == [
        f"Domain {dom.domid} has shut down, reason code 1 0x1",
        "Action for shutdown reason code 1 is preserve",
        "Done. Exiting now",
    ]
    assert machine.domains.get(dom.domid) is dom
    assert dom.state_chars() == "---sr-"
    assert machine.free_pages() < free
    machine.destroy_domain(dom)
    assert machine.free_pages() == free and audit(machine) == []


@pytest.mark.timeout(60)
def test_pv_poweroff_and_crash_reasons_reach_xl(machine, tmp_path):
    """A PV guest's SCHEDOP_shutdown reason is the domain's shutdown code: poweroff
    destroys it by default (xl_parse.c:1650-1651); on_crash="preserve" keeps a crashed one
    with State `---sc-` and Reason-Code 3."""
    log, write = logger()
    off = pv_guest(tmp_path, "off", "xor ebx, ebx\n" + SHUTDOWN)
    dom = machine.create_domain(
        DomainSpec(name="off", memory=8, type="pv", kernel=off, xl_log=write)
    )
    domid = dom.domid
    assert wait_for(lambda: domid not in machine.domains)
    assert wait_for(lambda: len(log) == 4)
    assert log == [
        f"Domain {domid} has shut down, reason code 0 0x0",
        "Action for shutdown reason code 0 is destroy",
        f"Domain {domid} needs to be cleaned up: destroying the domain",
        "Done. Exiting now",
    ]
    crash = pv_guest(tmp_path, "cr", "mov ebx, 3\n" + SHUTDOWN)
    log.clear()
    dom = machine.create_domain(
        DomainSpec(name="cr", memory=8, type="pv", kernel=crash, xl_log=write, on_crash="preserve")
    )
    assert wait_for(lambda: len(log) == 3)
    assert log[1] == "Action for shutdown reason code 3 is preserve"
    assert dom.state_chars() == "---sc-" and dom.shutdown_code == "c"
    machine.destroy_domain(dom)
    assert audit(machine) == []


@pytest.mark.timeout(60)
def test_rename_restart_keeps_the_old_domain_under_a_dated_name(machine, tmp_path):
    """on_crash="rename-restart": libxl_domain_preserve() renames the crashed domain
    NAME-%Y%m%dT%H%MZ with a new UUID (xl_vmcontrol.c:551-562), then xl restarts NAME."""
    log, write = logger()
    born = restarts_end_after_one(machine, "on_crash")
    crash = pv_guest(tmp_path, "cr", "mov ebx, 3\n" + SHUTDOWN)
    spec = DomainSpec(
        name="rr", memory=8, type="pv", kernel=crash, xl_log=write, on_crash="rename-restart"
    )
    dom = machine.create_domain(spec)
    domid, uuid = dom.domid, dom.handle
    assert wait_for(lambda: len(born) == 2, timeout=10)
    assert re.fullmatch(r"rr-\d{8}T\d{4}Z", dom.name), dom.name
    assert dom.handle != uuid and dom.state_chars() == "---sc-"
    assert machine.domains.get(domid) is dom
    new_id, new_name, new_uuid = born[1]
    assert new_id > domid and new_name == "rr" and new_uuid == uuid
    assert wait_for(lambda: len(log) == 9)
    assert log == [
        f"Domain {domid} has shut down, reason code 3 0x3",
        "Action for shutdown reason code 3 is rename-restart",
        f"Preserving domain {domid} rr with suffix{dom.name[2:]}",
        "Done. Rebooting now",
        f"Waiting for domain rr (domid {new_id}) to die [pid {PID}]",
        f"Domain {new_id} has shut down, reason code 3 0x3",
        "Action for shutdown reason code 3 is destroy",
        f"Domain {new_id} needs to be cleaned up: destroying the domain",
        "Done. Exiting now",
    ]
    machine.destroy_domain(dom)
    assert wait_for(lambda: machine.domain_list()[1:] == [])
    assert audit(machine) == []


def test_actions_are_checked_at_create():
    """xl_parse.c:1653 etc. for an unknown action; core dumps and soft reset are not
    emulated and say so in a line of ours. Moved here from test_pv_guests.py (where only
    destroy was accepted)."""
    m = Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20))
    try:
        spec = DomainSpec(name="a", type="pv", kernel="/nonexistent", on_crash="explode")
        with pytest.raises(DomainError, match='^Unknown on_crash action "explode" specified$'):
            m.create_domain(spec)
        spec = DomainSpec(name="a", on_watchdog="coredump-destroy")
        with pytest.raises(
            DomainError,
            match=r'^on_watchdog="coredump-destroy": not emulated here \(no core dumps, '
            r"no soft reset\)$",
        ):
            m.create_domain(spec)
        assert m.domain_list()[1:] == [] and audit(m) == []
    finally:
        m.shutdown()


def test_defaults_are_xls():
    """xl_parse.c:1650-1684."""
    spec = DomainSpec(name="a")
    assert (spec.on_poweroff, spec.on_reboot, spec.on_watchdog, spec.on_crash) == (
        "destroy",
        "restart",
        "destroy",
        "destroy",
    )
    assert spec.on_soft_reset == "soft-reset"
