"""The control channel (xenconsole/control.py) and the host-side `xl` (xenconsole/xlclient.py)
against a real `xenconsole serve`: the same bytes and exit codes as typing on the serial
line, stdout and stderr apart, nothing typed on the serial line, uploads of `xl create`'s
files, `xl console`, the shim, the socket's mode and owner check, and confinement from the
control side (inotify canary)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from console_hosts import host_only
from inotify import Watch

from xenconsole.testing import serve
from xenconsole.xlclient import shim_dir

XC = [sys.executable, "-m", "xenconsole"]
SKEL = os.path.join(os.path.dirname(shim_dir()), "dom0", "skel", "root")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    top = tmp_path_factory.mktemp("control")
    root = top / "dom0"
    root.mkdir()
    sock = str(top / "c.sock")
    # No domains but dom0: `xl list` and `xl info` do not change between two runs.
    with serve(*host_only(top), "--dom0-root", str(root), "--control", sock) as host:
        host.wait_booted()
        with host.console("tcp", timeout=60) as con:
            yield host, con, root
    assert not os.path.exists(sock)


def own(text: str) -> str:
    """Without the guests' `(dN)` lines that may arrive on the serial line meanwhile."""
    return "".join(ln for ln in text.splitlines(True) if not re.match(r"\(d\d+\) ", ln))


def serial(con, line: str) -> tuple[int, str]:
    out = own(con.run(line, timeout=60))
    return con.exit_status, out


def control(host, *args: str) -> tuple[int, str, str]:
    r = host.xl(*args)
    return r.returncode, r.stdout, r.stderr


PARITY = [
    ("list",),
    ("list", "0"),
    ("list", "nosuch"),
    ("frob",),
    ("-z", "list"),
    ("destroy",),
    ("destroy", "99"),
    ("create", "/nonexistent.cfg"),
    ("create", "/dev/null", 'name="p"', "memory=4", "vcpus=99"),
    ("create", 'name="p"', "memory=4"),
    ("help", "list"),
    ("info", "virt_caps"),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("args", PARITY, ids=" ".join)
def test_same_bytes_and_status_as_the_serial_line(served, args):
    host, con, _root = served
    status, out, err = control(host, *args)
    s_status, s_out = serial(con, "xl " + shlex.join(args))  # the same argv in dom0's shell
    assert status == s_status
    # The serial line is one tty for both streams; here they are apart, stdout first only
    # when the command printed to stdout first (each of these writes one of them, or
    # stdout then stderr).
    assert out + err == s_out or err + out == s_out, (out, err, s_out)
    if status != 0 and args[0] not in ("help",):
        assert err  # xl's complaints are on stderr


@pytest.mark.timeout(120)
def test_stdout_and_stderr_apart(served):
    host, _con, _root = served
    # tools/xl/xl_utils.c find_domain(): fprintf(stderr, "%s is an invalid domain
    # identifier (rc=%d)\n"); xl.c: "command not implemented" on stderr.
    assert control(host, "list", "nosuch") == (
        1,
        "",
        "nosuch is an invalid domain identifier (rc=-6)\n",
    )
    assert control(host, "frob") == (1, "", "command not implemented\n")
    status, out, err = control(host, "list")
    assert (status, err) == (0, "") and out.splitlines()[1].startswith("Domain-0 ")


@pytest.mark.timeout(180)
def test_create_uploads_the_callers_files_and_console_streams(served, tmp_path):
    host, con, root = served
    prog = tmp_path / "hello.S"
    shutil.copy(os.path.join(SKEL, "hello.S"), prog)
    cfg = tmp_path / "h.cfg"
    cfg.write_text(f'name = "hc"\nmemory = 4\nworkload = "asm:{prog}"\n')
    status, out, err = control(host, "create", "-p", str(cfg))
    # xl_vmcontrol.c: "Parsing config from %s" goes to stderr; the path is the caller's.
    assert (status, out, err) == (0, "", f"Parsing config from {cfg}\n")
    # The same files, at the same paths, in dom0's own filesystem.
    assert (root / str(cfg).lstrip("/")).read_text() == cfg.read_text()
    assert (root / str(prog).lstrip("/")).read_bytes() == prog.read_bytes()
    console = subprocess.Popen(
        [*XC, "xl", "--control", host.control, "console", "hc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.5)  # as xtf-runner does, unpause right after starting the console
        assert control(host, "unpause", "hc") == (0, "", "")
        out, err = console.communicate(timeout=60)
    finally:
        if console.poll() is None:
            console.kill()
    # The guest prints one line, goes offline; the domain powers off and the console ends.
    assert (console.returncode, out, err) == (0, "hello from cpu 0\n", "")
    # The serial line's `xl create` of the same, now dom0's, file.
    s_status, s_out = serial(con, f"xl create -n {cfg}")
    assert s_status == 0 and s_out.startswith(f"Parsing config from {cfg}\n")


@pytest.mark.timeout(120)
def test_relative_paths_are_dom0s(served):
    host, _con, _root = served
    # hello.S is not in this operator-given root; the skeleton is only in private roots.
    args = ("create", "-q", "/dev/null", 'name="sc"', "memory=4", 'workload="asm:hello.S"')
    status, _out, err = control(host, *args)
    assert (status, err) == (3, "workload: asm: cannot read hello.S\n")


@pytest.mark.timeout(120)
def test_nothing_typed_on_the_serial_line(served):
    host, con, _root = served
    con.settle(quiet=0.3, timeout=5)
    assert control(host, "list")[0] == 0
    assert own(con.settle(quiet=0.5, timeout=5)) == ""
    # What Xen prints because of a command goes where Xen prints: the serial line.
    status, out, err = control(host, "debug-keys", "h")
    assert (status, out, err) == (0, "", "")
    seen = con.settle(quiet=0.5, timeout=10)
    assert "(XEN) 'h' pressed -> showing installed handlers" in seen
    assert "xl debug-keys" not in seen


@pytest.mark.timeout(120)
def test_control_side_confinement(served, tmp_path):
    host, _con, root = served
    secret = tempfile.mkdtemp(prefix="xenconsole-canary-")
    try:
        canary = os.path.join(secret, "canary.S")
        with open(canary, "w") as f:
            f.write("nop\n")
        watch = Watch(secret, canary)
        rel = os.path.relpath(canary, "/root")
        (root / "root" / "out.S").symlink_to(canary)
        cases = [f"/..{canary}", "../" * 12 + canary.lstrip("/"), "out.S", rel]
        s = socket.socket(socket.AF_UNIX)
        s.connect(host.control)
        f = s.makefile("rwb")
        # The protocol's own xl op (the host-side xl would read the caller's file itself,
        # with the caller's permissions, and upload it: here nothing is uploaded).
        for path in cases:
            args = ["create", "-q", "/dev/null", 'name="x"', "memory=4", f'workload="asm:{path}"']
            f.write(json.dumps({"op": "xl", "args": args}).encode() + b"\n")
            f.flush()
            msgs = [json.loads(f.readline()) for _ in range(2)]
            assert msgs == [{"err": f"workload: asm: cannot read {path}\n"}, {"exit": 3}], path
        # The upload op itself: outside paths refused, nothing written there.
        for path in ("/../x", "../../../x", "/root/out.S"):
            f.write(json.dumps({"op": "upload", "path": path, "data": "eA=="}).encode() + b"\n")
            f.flush()
            assert json.loads(f.readline()) == {"error": f"upload: {path}: Permission denied"}
        s.close()
        assert watch.events() == []
        assert os.listdir(secret) == ["canary.S"]
        watch.close()
    finally:
        shutil.rmtree(secret)


@pytest.mark.timeout(60)
def test_protocol_errors_are_one_line(served):
    host, _con, _root = served
    s = socket.socket(socket.AF_UNIX)
    s.connect(host.control)
    f = s.makefile("rwb")
    for req, reply in [
        (b"not json", {"error": "control: a request is one JSON object per line"}),
        (b'{"op": "rm"}', {"error": "control: unknown op 'rm' (xl, input, upload, access, who)"}),
        (b'{"op": "xl", "args": "list"}', {"error": "control: xl needs args, a list of strings"}),
        (b'{"op": "upload", "path": "/a", "data": "!!"}',
         {"error": "control: upload: data is not base64"}),
    ]:  # fmt: skip
        f.write(req + b"\n")
        f.flush()
        assert json.loads(f.readline()) == reply
    f.write(b'{"op": "xl", "args": ["list", "0"]}\n')
    f.flush()
    msgs = [json.loads(f.readline())]
    while "exit" not in msgs[-1]:
        msgs.append(json.loads(f.readline()))
    text = "".join(m["out"] for m in msgs[:-1])
    assert text.startswith("Name ") and msgs[-1] == {"exit": 0}
    s.close()


@pytest.mark.timeout(60)
def test_socket_is_0600_and_refuses_another_user(tmp_path):
    pub = tempfile.mkdtemp(prefix="xenconsole-pub-")
    os.chmod(pub, 0o755)  # a directory anyone may enter: only the socket's mode protects it
    sock = os.path.join(pub, "c.sock")
    try:
        with serve("--control", sock, telnet=False) as host:
            assert host.control == sock
            assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
            assert stat.S_ISSOCK(os.lstat(sock).st_mode)
            if os.getuid() != 0:
                return  # no second uid to try from: the mode check above is the test
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 3
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    c = socket.socket(socket.AF_UNIX)
                    c.connect(sock)
                    code = 1
                except PermissionError:
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(pub)


@pytest.mark.timeout(120)
def test_shim_and_server_selection(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run_dir)}
    env.pop("XENCONSOLE_CONTROL", None)
    shim = subprocess.run([*XC, "shim-dir"], capture_output=True, text=True, check=True)
    assert shim.stdout == shim_dir() + "\n"
    assert os.access(os.path.join(shim_dir(), "xl"), os.X_OK)
    env["PATH"] = shim_dir() + os.pathsep + env["PATH"]
    env["XENCONSOLE_PYTHON"] = sys.executable
    none = subprocess.run(["xl", "list"], capture_output=True, text=True, env=env, timeout=60)
    where = run_dir / "xenconsole"
    assert (none.returncode, none.stdout) == (2, "")
    assert none.stderr == (
        f"xenconsole: error: no xenconsole server's control socket in {where} "
        "(start `xenconsole serve`, or set XENCONSOLE_CONTROL)\n"
    )
    with serve(env={"XDG_RUNTIME_DIR": str(run_dir)}, telnet=False) as host:
        assert host.control == str(where / f"control-{host.proc.pid}.sock")
        via_shim = subprocess.run(["xl", "list", "0"], capture_output=True, text=True, env=env)
        assert (via_shim.returncode, via_shim.stderr) == (0, "")
        assert via_shim.stdout.splitlines()[1].startswith("Domain-0 ")
        with serve(env={"XDG_RUNTIME_DIR": str(run_dir)}, telnet=False) as other:
            two = subprocess.run(["xl", "list"], capture_output=True, text=True, env=env)
            assert two.returncode == 2 and "several servers are running" in two.stderr
            env["XENCONSOLE_CONTROL"] = other.control
            chosen = subprocess.run(["xl", "list", "0"], capture_output=True, text=True, env=env)
            assert chosen.returncode == 0 and chosen.stdout == via_shim.stdout
