"""Issue 13 part 9: labgrid, distributed, all on 127.0.0.1. A lab server, the exporter YAML
`xenconsole labgrid-exporter-config` wrote, labgrid-coordinator, labgrid-exporter, then
`labgrid-client console` (pexpect) and a labgrid pytest test with RemotePlace, SerialDriver
and ShellDriver running `xl list` on the dom0 shell. Free ports; everything is stopped."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("labgrid")
pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.e2e
XC = [sys.executable, "-m", "xenconsole"]
BIN = Path(sys.executable).parent
PROMPT = "root@dom0:~# "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def client(coord: str, *args: str, env=None) -> str:
    r = subprocess.run([str(BIN / "labgrid-client"), "-x", coord, *args], capture_output=True,
                       text=True, timeout=60, env=env)  # fmt: skip
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


INNER_TEST = """
def test_xl_list_through_labgrid(target):
    shell = target.get_driver("ShellDriver")
    target.activate(shell)
    lines = shell.run_check("xl list")
    assert lines[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    assert lines[1].split()[:4] == ["Domain-0", "0", "128", "1"]
    assert shell.run("false")[2] == 1
    assert shell.run_check("A=1 && echo $A || echo no") == ["1"]
"""

ENV_YAML = """
targets:
  main:
    resources:
      RemotePlace:
        name: {place}
    drivers:
      SerialDriver: {{}}
      ShellDriver:
        prompt: 'root@dom0:~# '
        login_prompt: 'login: '
        username: 'root'
        login_timeout: 60
"""


@pytest.mark.timeout(300)
def test_labgrid_coordinator_exporter_client_and_shelldriver(tmp_path):
    rfc, coord_port = free_port(), free_port()
    coord = f"127.0.0.1:{coord_port}"
    (tmp_path / "small.toml").write_text('[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n')
    (tmp_path / "lab.toml").write_text(
        f'[[console]]\nname = "xen1"\nconfig = "small.toml"\nrfc2217 = "127.0.0.1:{rfc}"\n'
        "no_wait = true\n"
    )
    lab, yaml = str(tmp_path / "lab.toml"), str(tmp_path / "exporter.yaml")
    r = subprocess.run([*XC, "labgrid-exporter-config", lab, "-o", yaml], capture_output=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (
        (tmp_path / "exporter.yaml")
        .read_text()
        .endswith(
            f"xen1:\n  NetworkSerialPort:\n    host: '127.0.0.1'\n    port: {rfc}\n"
            "    speed: 115200\n    protocol: rfc2217\n"
        )
    )
    env = {**os.environ, "LG_COORDINATOR": coord, "PYTHONUNBUFFERED": "1"}
    procs = []

    def start(*cmd: str) -> subprocess.Popen:
        out = open(tmp_path / f"{Path(cmd[0]).name}.{len(procs)}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(p)
        return p

    def logs() -> str:
        return "".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in tmp_path.glob("*.log"))

    place = "xen1place"
    try:
        start(*XC, "serve", "--config", str(tmp_path / "lab.toml"))
        start(str(BIN / "labgrid-coordinator"), "--listen", coord)
        wait_port(rfc)
        wait_port(coord_port)
        start(str(BIN / "labgrid-exporter"), "-c", coord, "-n", "exp1", "--hostname",
              "127.0.0.1", str(tmp_path / "exporter.yaml"))  # fmt: skip
        end = time.monotonic() + 120
        while "exp1/xen1/NetworkSerialPort" not in client(coord, "resources"):
            assert time.monotonic() < end, "the exporter never registered xen1\n" + logs()
            time.sleep(0.5)
        client(coord, "-p", place, "create")
        client(coord, "-p", place, "add-match", "exp1/xen1/*")
        client(coord, "-p", place, "acquire")
        # `labgrid-client console` runs microcom, or telnet without it (.ci/run installs both).
        console_tool = shutil.which("microcom") or shutil.which("telnet")
        if console_tool:
            con = pexpect.spawn(str(BIN / "labgrid-client"), ["-x", coord, "-p", place,
                                "console"], env=env, timeout=60)  # fmt: skip
            try:
                con.send("\r")
                con.expect_exact(PROMPT)
                con.send("xl list\r")
                con.expect(r"Domain-0\s+0\s+128\s+1 ")
                con.expect_exact(PROMPT)
            finally:
                con.terminate(force=True)
        (tmp_path / "env.yaml").write_text(ENV_YAML.format(place=place))
        (tmp_path / "test_inner.py").write_text(INNER_TEST)
        (tmp_path / "pytest.ini").write_text("[pytest]\n")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--lg-env", "env.yaml", "test_inner.py"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=200)  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert re.search(r"1 passed", r.stdout), r.stdout
        client(coord, "-p", place, "release")
    finally:
        for p in reversed(procs):
            stop(p)
    assert all(p.poll() is not None for p in procs)
    if not console_tool:  # everything else passed; say what was not run
        pytest.skip("labgrid-client console not run: it needs microcom or telnet installed")
