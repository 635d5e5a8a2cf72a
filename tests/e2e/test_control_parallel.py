"""Issue 11, acceptance 4: 20 clients run `xl list` through the control channel 50 times each,
in parallel, while a guest runs and someone types on the serial line. Every answer is
complete and correct (exactly dom0's and the guest's lines, exit 0, nothing on stderr), no
answer holds another's bytes, and the serial user's lines come back exactly as typed.

The clients speak the protocol through xenconsole/xlclient.py's Channel, one connection per
command as `xenconsole xl` makes; a few real `xenconsole xl list` processes run alongside
(1,000 process start-ups would not fit CI's time on 2 cores; bench/bench_hostxl.py runs
that many)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest
from console_hosts import host_only

from xenconsole.testing import serve
from xenconsole.xlclient import Channel, connect

CLIENTS, ROUNDS = 20, 50
HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
# tools/xl/xl_list.c list_domains(): "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f".
ROW = r"{name:<40} {id:>5} {mem:>5} {vcpus:>5}     [-rbpsc]{{6}} +\d+\.\d"


def rows() -> re.Pattern:
    dom0 = ROW.format(name="Domain-0", id=0, mem=512, vcpus=2)
    spin = ROW.format(name="spin", id=1, mem=4, vcpus=1)
    return re.compile(rf"{re.escape(HEADER)}\n{dom0}\n{spin}\n")


def xl_list(path: str) -> tuple[int, str, str]:
    ch = Channel(connect(path))
    try:
        ch.send({"op": "xl", "args": ["list"]})
        out, err = [], []
        while True:
            msg = ch.recv()
            assert msg is not None, "connection closed before the exit status"
            if "exit" in msg:
                return msg["exit"], "".join(out), "".join(err)
            (out if "out" in msg else err).append(msg.get("out", msg.get("err", "")))
    finally:
        ch.close()


@pytest.mark.timeout(300)
def test_parallel_clients_with_a_running_guest_and_a_serial_user(tmp_path):
    sock = str(tmp_path / "c.sock")
    with serve(*host_only(tmp_path), "--control", sock) as host:
        host.wait_booted()
        # spin.cfg is one of the examples every private dom0 root starts with.
        assert host.xl("create", "spin.cfg").returncode == 0
        expect = rows()
        assert expect.fullmatch(xl_list(sock)[1]), xl_list(sock)[1]
        failures: list[str] = []
        typed: list[str] = []
        stop = threading.Event()

        def client(n: int) -> None:
            for i in range(ROUNDS):
                status, out, err = xl_list(sock)
                if (status, err) != (0, "") or not expect.fullmatch(out):
                    failures.append(f"client {n} round {i}: {status} {out!r} {err!r}")

        def serial_user() -> None:
            with host.console("tcp", timeout=60) as con:
                i = 0
                while not stop.is_set():
                    line = f"typed-{i}-" + "x" * (i % 40)
                    got = con.run(f"echo {line}", timeout=60)
                    if got != line + "\n":
                        failures.append(f"serial: {got!r} for {line!r}")
                    typed.append(line)
                    i += 1

        user = threading.Thread(target=serial_user)
        user.start()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "xenconsole", "xl", "--control", sock, "list"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for t in threads:
            t.join(240)
        cli = [(p.wait(120), *p.communicate()) for p in procs]
        stop.set()
        user.join(120)
        assert failures == []
        assert not any(t.is_alive() for t in threads) and not user.is_alive()
        for status, out, err in cli:
            assert (status, err) == (0, "") and expect.fullmatch(out), (status, out, err)
        assert len(typed) >= 1
        # The guest ran all along.
        assert host.xl("list", "spin").returncode == 0
