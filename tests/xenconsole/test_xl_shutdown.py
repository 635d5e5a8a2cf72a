"""`xl` and a PV domain's shutdown, from dom0's shell: `xl list` / `xl list -v` /
`xl vcpu-list` show the domain and its shutdown reason as Xen's xl does, the config's
on_* action is carried out, and the daemon's log is /var/log/xen/xl-NAME.log.

Formats: tools/xl/xl_info.c:476-519 (list), xl_vcpu.c:34-52 (vcpu-list), xl_vmcontrol.c:1051,
1079-1081, 474-476, 1137 (the daemon's LOG lines), xl_parse.c:1657-1661 (unknown action).
"""

from __future__ import annotations

import os

import pytest
from guest_helpers import wait_for

from emu.asm import assemble
from emu.boot import boot_sync
from emu.host import HostConfig
from emu.machine import Machine
from emu.pv.elf import write_pv_elf
from xenconsole.dom0.fs import Dom0Fs, FsError
from xenconsole.dom0.shell import Dom0Shell

HC = 0x101000
SHUTDOWN = (
    "sub rsp, 16\nmov dword ptr [rsp], ebx\nmov rdi, 2\nmov rsi, rsp\n"
    f"mov rax, {HC + 32 * 29}\ncall rax\nspin: jmp spin\n"
)


@pytest.fixture
def world():
    m = boot_sync(Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=64 << 20)))
    fs = Dom0Fs.private()
    out = bytearray()
    sh = Dom0Shell(m, out.extend, fs)
    for name, reason in (("crash", 3), ("off", 0)):
        code = assemble(f"mov ebx, {reason}\n" + SHUTDOWN, 0x100000, 1 << 20)
        fs.write(f"/root/{name}.elf", write_pv_elf(code))
    yield m, fs, sh, out
    m.shutdown()
    fs.close()


def run(sh, out: bytearray, line: str) -> tuple[int, str]:
    out.clear()
    status = sh.run(line)
    return status, out.decode().replace("\r\n", "\n")


@pytest.mark.timeout(60)
def test_a_crashed_pv_domain_preserved_in_xl_list(world):
    m, fs, sh, out = world
    fs.write(
        "/root/cr.cfg",
        b'name = "cr"\ntype = "pv"\nkernel = "/root/crash.elf"\nmemory = 8\nvcpus = 2\n'
        b'on_crash = "preserve"\n',
    )
    status, text = run(sh, out, "xl create /root/cr.cfg")
    assert (status, text) == (0, "Parsing config from /root/cr.cfg\n")
    dom = m.find_domain("cr")
    assert wait_for(lambda: dom.shutdown_code == "c")
    mem = dom.tot_pages * 4 // 1024
    t = dom.cpu_time()
    _, text = run(sh, out, "xl list cr")
    assert text.splitlines()[1] == f"{'cr':<40} {dom.domid:5d} {mem:5d}     1     ---sc-  {t:8.1f}"
    _, text = run(sh, out, "xl list -v cr")
    assert text.splitlines()[1].startswith(
        f"{'cr':<40} {dom.domid:5d} {mem:5d}     1     ---sc-  {t:8.1f} {dom.handle}        3 "
    )
    _, text = run(sh, out, "xl vcpu-list cr")
    v0, v1 = dom.vcpus
    assert text.splitlines()[1:] == [
        f"{'cr':<32} {dom.domid:5d}     0{v0.processor:5d}   --- "
        f"{v0.cpu_time_ns / 1e9:9.1f}  all / all",
        f"{'cr':<32} {dom.domid:5d}     1    -   --p       0.0  all / all",
    ]
    assert wait_for(lambda: fs.read("/var/log/xen/xl-cr.log").endswith(b"Exiting now\n"))
    log = fs.read("/var/log/xen/xl-cr.log").decode()
    assert log == (
        f"Waiting for domain cr (domid {dom.domid}) to die [pid {os.getpid()}]\n"
        f"Domain {dom.domid} has shut down, reason code 3 0x3\n"
        "Action for shutdown reason code 3 is preserve\n"
        "Done. Exiting now\n"
    )
    assert run(sh, out, "xl destroy cr") == (0, "")
    assert m.find_domain("cr") is None


@pytest.mark.timeout(60)
def test_xl_create_e_leaves_the_shut_down_domain_alone(world):
    """`-e`: no daemon waits for the domain, so nothing acts on its poweroff."""
    m, fs, sh, out = world
    line = (
        "xl create -e -q /dev/null 'name=\"off\"' 'type=\"pv\"' 'kernel=\"/root/off.elf\"' memory=8"
    )
    assert run(sh, out, line) == (0, "")
    dom = m.find_domain("off")
    assert wait_for(lambda: dom.shutdown_code == "-")
    assert dom.state_chars() == "---s--"
    assert m.find_domain("off") is dom
    with pytest.raises(FsError):
        fs.read("/var/log/xen/xl-off.log")
    assert run(sh, out, "xl destroy off") == (0, "")


def test_an_unknown_action_is_refused_before_anything_is_made(world):
    m, _fs, sh, out = world
    line = "xl create -q /dev/null 'name=\"a\"' 'type=\"pv\"' 'on_reboot=\"bogus\"'"
    assert run(sh, out, line) == (1, 'Unknown on_reboot action "bogus" specified\n')
    assert m.find_domain("a") is None
