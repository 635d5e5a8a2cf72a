"""dom0's own filesystem (xenconsole/dom0/fs.py) from the dom0 shell: config files and
`asm:` programs are read inside it only; `..` above its top, absolute link targets and links
that climb out are refused with one line that is the same whether the host path exists or
not; an inotify watch on a canary outside shows nothing outside is ever opened or listed.
Also the file builtins ls, cat, cd, pwd (coreutils' and bash's messages)."""

from __future__ import annotations

import os

import pytest
from inotify import Watch

from emu.boot import boot_sync
from emu.host import HostConfig
from emu.machine import Machine
from xenconsole.dom0.fs import Dom0Fs, FsError
from xenconsole.dom0.shell import Dom0Shell, prompt_for

CANARY_CFG = 'name = "stolen"\nmemory = 4\n'


@pytest.fixture(scope="module")
def machine():
    m = boot_sync(Machine(HostConfig(memory=256 << 20, cpus=2, dom0_mem=64 << 20), guests=False))
    yield m
    m.shutdown()


@pytest.fixture
def world(tmp_path):
    """host/secret/ (canary files outside) and host/dom0/ (dom0's root) with links out."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "canary.cfg").write_text(CANARY_CFG)
    (secret / "canary.S").write_text("nop\n")
    root = tmp_path / "dom0"
    (root / "root").mkdir(parents=True)
    (root / "root" / "ok.cfg").write_text('name = "ok"\nmemory = 4\n')
    (root / "root" / "abs.cfg").symlink_to(secret / "canary.cfg")  # absolute target
    (root / "root" / "up.cfg").symlink_to("../../secret/canary.cfg")  # climbs out
    (root / "root" / "dirlink").symlink_to("../../secret")
    (root / "root" / "in.cfg").symlink_to("ok.cfg")  # stays inside: fine
    (root / "etc").mkdir()
    watch = Watch(str(secret), str(secret / "canary.cfg"), str(secret / "canary.S"))
    yield root, secret, watch
    watch.close()


def shell(machine, root) -> tuple[Dom0Shell, bytearray]:
    out = bytearray()
    return Dom0Shell(machine, out.extend, Dom0Fs(str(root))), out


def run(sh: Dom0Shell, out: bytearray, line: str) -> tuple[int, str]:
    out.clear()
    status = sh.run(line)
    return status, out.decode().replace("\r\n", "\n")


REFUSED = [
    ("../../secret/canary.cfg", "Permission denied"),
    ("/../secret/canary.cfg", "Permission denied"),
    ("abs.cfg", "Permission denied"),
    ("up.cfg", "Permission denied"),
    ("dirlink/canary.cfg", "Permission denied"),
]


@pytest.mark.parametrize(("path", "why"), REFUSED)
def test_config_paths_out_of_dom0_are_refused(machine, world, path, why):
    root, _secret, watch = world
    sh, out = shell(machine, root)
    # tools/xl/xl_vmcontrol.c create_domain(): "Failed to read config file: %s: %s".
    assert run(sh, out, f"xl create {path}") == (
        3,
        f"Failed to read config file: {path}: {why}\n",
    )
    assert watch.events() == []  # nothing outside opened, read or even listed


def test_absolute_host_paths_are_dom0_paths_and_tell_nothing(machine, world):
    root, secret, watch = world
    sh, out = shell(machine, root)
    exists = str(secret / "canary.cfg")
    missing = str(secret / "no-such.cfg")
    a = run(sh, out, f"xl create {exists}")
    b = run(sh, out, f"xl create {missing}")
    assert a == (3, f"Failed to read config file: {exists}: No such file or directory\n")
    assert b == (3, f"Failed to read config file: {missing}: No such file or directory\n")
    # The same for an existing host directory with an absolute path inside dom0 (/etc is dom0's).
    assert run(sh, out, "xl create /etc/passwd") == (
        3,
        "Failed to read config file: /etc/passwd: No such file or directory\n",
    )
    assert watch.events() == []


@pytest.mark.parametrize(
    "path",
    ["../../secret/canary.S", "/../secret/canary.S", "dirlink/canary.S", "SECRET/canary.S"],
)
def test_asm_paths_out_of_dom0_are_refused(machine, world, path):
    root, secret, watch = world
    path = path.replace("SECRET", str(secret))
    sh, out = shell(machine, root)
    status, text = run(sh, out, f"xl create /dev/null 'name=\"a\"' 'workload=\"asm:{path}\"'")
    # emu/workload.py assemble_program(): one line, no reason, whatever the host holds.
    assert (status, text) == (
        3,
        f"Parsing config from /dev/null\nworkload: asm: cannot read {path}\n",
    )
    assert watch.events() == []
    assert "a" not in {d.name for d in machine.domains.values()}


def test_inside_paths_and_inner_links_work(machine, world):
    root, _secret, watch = world
    sh, out = shell(machine, root)
    assert run(sh, out, "xl create -n in.cfg") == (
        0,
        'Parsing config from in.cfg\nname = "ok"\nmemory = 4\nmaxmem = 4\nvcpus = 1\n'
        'workload = "idle"\n',
    )
    assert run(sh, out, "xl create -n /root/../root/./ok.cfg")[0] == 0
    assert watch.events() == []


def test_fifo_and_directory_configs_do_not_block(machine, world):
    root, _secret, _watch = world
    os.mkfifo(root / "root" / "fifo.cfg")
    sh, out = shell(machine, root)
    assert run(sh, out, "xl create fifo.cfg") == (
        3,
        "Failed to read config file: fifo.cfg: Invalid argument\n",
    )
    assert run(sh, out, "xl create /etc") == (
        3,
        "Failed to read config file: /etc: Invalid argument\n",
    )


def test_ls_cat_cd_pwd(machine, world):
    root, _secret, watch = world
    sh, out = shell(machine, root)
    assert run(sh, out, "pwd") == (0, "/root\n")
    assert run(sh, out, "ls -1 /") == (0, "etc\nroot\n")
    assert run(sh, out, "ls") == (0, "abs.cfg  dirlink  in.cfg  ok.cfg  up.cfg\n")
    assert run(sh, out, "cat in.cfg") == (0, 'name = "ok"\nmemory = 4\n')
    assert run(sh, out, "cat up.cfg") == (1, "cat: up.cfg: Permission denied\n")
    assert run(sh, out, "cat nope") == (1, "cat: nope: No such file or directory\n")
    assert run(sh, out, "cat /etc") == (1, "cat: /etc: Is a directory\n")
    assert run(sh, out, "ls dirlink") == (
        2,
        "ls: cannot access 'dirlink': Permission denied\n",
    )
    assert run(sh, out, "ls ..") == (0, "etc  root\n")
    assert run(sh, out, "ls ../..") == (2, "ls: cannot access '../..': Permission denied\n")
    assert run(sh, out, "cd ../..") == (1, "-bash: cd: ../..: Permission denied\n")
    assert run(sh, out, "cd dirlink") == (1, "-bash: cd: dirlink: Permission denied\n")
    assert run(sh, out, "cd /etc") == (0, "")
    assert (sh.cwd, prompt_for(sh.cwd)) == ("/etc", "root@dom0:/etc# ")
    assert run(sh, out, "xl create -n ../root/ok.cfg")[0] == 0
    assert run(sh, out, "cd") == (0, "")
    assert prompt_for(sh.cwd) == "root@dom0:~# "
    assert run(sh, out, "ls -z") == (
        2,
        "ls: invalid option -- 'z'\nTry 'ls --help' for more information.\n",
    )
    assert watch.events() == []


def test_private_root_has_the_readme_examples():
    fs = Dom0Fs.private()
    try:
        assert os.stat(fs.root).st_mode & 0o777 == 0o700
        assert fs.listing("/root") == ["hello.S", "hello.cfg", "spin.S", "spin.cfg"]
        assert fs.listing("/etc/xen") == [
            "asm.cfg",
            "idle.cfg",
            "random.cfg",
            "stream.cfg",
            "touch.cfg",
        ]
        with pytest.raises(FsError) as e:
            fs.read("/root/../..")
        assert e.value.strerror == "Permission denied"
        assert fs.write("/tmp/x/y.S", b"nop\n") == "/tmp/x/y.S"
        assert fs.read("/tmp/x/y.S") == b"nop\n"
    finally:
        fs.close()
    assert not os.path.exists(fs.root)


def test_upload_never_writes_through_a_link(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    root = tmp_path / "dom0"
    root.mkdir()
    (root / "out").symlink_to(secret)
    (root / "f").symlink_to(secret / "new")
    fs = Dom0Fs(str(root))
    for path in ("/out/x", "/f", "/../secret/x"):
        with pytest.raises(FsError) as e:
            fs.write(path, b"data")
        assert e.value.strerror == "Permission denied", path
    assert os.listdir(secret) == []


@pytest.mark.parametrize("path", ["../../secret/vmlinuz", "/../secret/vmlinuz", "dirlink/vmlinuz"])
def test_kernel_paths_out_of_dom0_are_refused(world, path):
    pytest.importorskip("emu.pv", reason="kernel= is read by PV guests (emu/pv/, issue 10)")
    machine = boot_sync(Machine(HostConfig(memory=256 << 20, cpus=2, dom0_mem=64 << 20)))
    root, secret, _watch = world
    (secret / "vmlinuz").write_bytes(b"\x7fELF")
    watch = Watch(str(secret), str(secret / "vmlinuz"))
    sh, out = shell(machine, root)
    name = f"k{len(path)}"
    args = f"'name=\"{name}\"' 'type=\"pv\"' memory=16 'kernel=\"{path}\"'"
    status, text = run(sh, out, f"xl create /dev/null {args}")
    # tools/libs/guest/xg_dom_core.c:205 xc_dom_malloc_filemap(): "failed to open file".
    assert status == 3
    assert text.splitlines()[0] == "Parsing config from /dev/null"
    assert text.splitlines()[1] == (
        f"xc: error: panic: xg_dom_core.c:205: failed to open file '{path}': "
        "Permission denied: Internal error"
    )
    assert watch.events() == []
    assert name not in {d.name for d in machine.domains.values()}
    watch.close()
    machine.shutdown()
