"""Soak of a lab server (issue 13): 3 hosts in one `xenconsole serve --config lab.toml`, each
with a guest printing sequence-numbered lines (`(d1) seq N`), 20 clients attaching, typing
and detaching in a loop, one spectator that never reads (stalled), for `--seconds`.

Checks and prints: every client session's transcript complete (the `seq` numbers it saw
have no gap; each command it typed got its answer), server RSS after warm-up and at the end
(target: under 5% growth), open fds (no growth), zero tracebacks on stderr. RSS and fds are
read at quiet moments, no client attached but the stalled spectator: after warm-up every
client is paused between two sessions for the reading, and at the end all have stopped, so
the two fd counts are comparable exactly.

    .venv/bin/python bench/bench_soak_lab.py [--seconds 1800] [--clients 20]

`soak(seconds, clients)` is what tests/e2e/test_lab_soak.py runs for 60 s in CI.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOSTS = ("xen1", "xen2", "xen3")
PROMPT = b"root@dom0:~# "
WARMUP = 15.0  # seconds: boots done and first sessions through before the baseline
# A guest printing `seq N` lines forever, a delay loop apart (GNU as, Intel syntax; the
# asm: ABI of docs/contract.md section 7; output through port 0xe9).
SEQ_GUEST = """\
    test rdi, rdi
    jnz park
    xor r12, r12
next:
    mov al, 's'
    out 0xe9, al
    mov al, 'e'
    out 0xe9, al
    mov al, 'q'
    out 0xe9, al
    mov al, ' '
    out 0xe9, al
    mov rax, r12
    mov rsi, rsp
    sub rsp, 32
    mov rbx, 10
digits:
    xor edx, edx
    div rbx
    add dl, '0'
    dec rsi
    mov byte ptr [rsi], dl
    test rax, rax
    jnz digits
print:
    mov al, byte ptr [rsi]
    out 0xe9, al
    inc rsi
    lea rax, [rsp + 32]
    cmp rsi, rax
    jb print
    add rsp, 32
    mov al, 10
    out 0xe9, al
    inc r12
    mov rcx, DELAY
spin:
    dec rcx
    jnz spin
    jmp next
park:
    sti
    hlt
    jmp park
"""


class Gate:
    """Pauses every client between two sessions, for a reading with none attached."""

    def __init__(self, clients: int) -> None:
        self.cv = threading.Condition()
        self.closed = False
        self.parked = 0
        self.clients = clients

    def checkpoint(self, stop: threading.Event) -> None:
        with self.cv:
            if not self.closed:
                return
            self.parked += 1
            self.cv.notify_all()
            while self.closed and not stop.is_set():
                self.cv.wait(0.5)
            self.parked -= 1

    def close(self, timeout: float = 120) -> bool:
        """Every client parked (True), or not within `timeout` (False)."""
        with self.cv:
            self.closed = True
            return self.cv.wait_for(lambda: self.parked == self.clients, timeout)

    def open(self) -> None:
        with self.cv:
            self.closed = False
            self.cv.notify_all()


@dataclass
class Stats:
    sessions: int = 0
    commands: int = 0
    seq_lines: int = 0
    gaps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stall_s: float = 0.0  # the longest the bench's own 10 s sleep overran: a frozen machine

    def error(self, text: str) -> None:
        """One problem, with the wall-clock time it was seen (to set against stalls)."""
        with self.lock:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {text}")


def write_lab(d: Path, delay: int) -> None:
    (d / "seq.S").write_text(SEQ_GUEST.replace("DELAY", str(delay)))
    for i, name in enumerate(HOSTS):
        (d / f"{name}.toml").write_text(
            '[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n\n'
            f'[[domain]]\nname = "seq{i}"\nmemory = 4\nvcpus = 1\nworkload = "asm:seq.S"\n'
        )
    text = ""
    for name in HOSTS:
        text += (f'[[console]]\nname = "{name}"\nconfig = "{name}.toml"\ntcp = "127.0.0.1:0"\n'
                 f'tcp_ro = ["127.0.0.1:0"]\nlog = "{name}.log"\nno_wait = true\n\n')  # fmt: skip
    (d / "lab.toml").write_text(text)


def start_server(d: Path) -> tuple[subprocess.Popen, dict[str, tuple[str, int]]]:
    cmd = [sys.executable, "-m", "xenconsole", "serve", "--config", str(d / "lab.toml")]
    proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=open(d / "stderr", "wb"),
                            start_new_session=True)  # fmt: skip
    where = {}
    while True:
        line = proc.stdout.readline().decode()
        if not line:
            raise SystemExit("server died: " + (d / "stderr").read_text())
        if line == "xenconsole: ready\n":
            return proc, where
        m = re.fullmatch(r"xenconsole: (\S+) (\S+) 127\.0\.0\.1:(\d+)\n", line)
        where[f"{m.group(1)} {m.group(2)}"] = ("127.0.0.1", int(m.group(3)))


def check_seq(text: str, who: str, stats: Stats) -> None:
    """The `(dN) seq K` lines of one session: consecutive K per domain (the first and last
    may be cut by the attach and detach)."""
    lines = re.findall(r"\((d\d+)\) seq (\d+)\r\n", text)
    last: dict[str, int] = {}
    for dom, k in lines:
        k = int(k)
        if dom in last and k != last[dom] + 1:
            with stats.lock:
                stats.gaps.append(f"{who}: {dom} seq {last[dom]} -> {k}")
        last[dom] = k
    with stats.lock:
        stats.seq_lines += len(lines)


def session(addr, who: str, stats: Stats, rng: random.Random, stop: threading.Event) -> None:
    s = socket.create_connection(addr, timeout=30)
    buf = b""
    try:
        for k in range(rng.randint(1, 4)):
            if stop.is_set():
                break
            token = f"{who}-{k}".encode()
            s.sendall(b"echo " + token + b"\r")
            end = time.monotonic() + 30
            while token + b"\r\n" + PROMPT not in buf.replace(b"echo " + token, b""):
                if time.monotonic() > end:
                    stats.error(f"{who}: no answer to echo {token!r}")
                    return
                d = s.recv(65536)
                if not d:
                    stats.error(f"{who}: closed by the server")
                    return
                buf += d
            with stats.lock:
                stats.commands += 1
            time.sleep(rng.uniform(0.1, 1.0))
    finally:
        s.close()
        check_seq(buf.decode("latin-1"), who, stats)
        with stats.lock:
            stats.sessions += 1


def client_loop(i: int, where, stats: Stats, stop: threading.Event, gate: Gate) -> None:
    rng = random.Random(i)
    n = 0
    while not stop.is_set():
        gate.checkpoint(stop)
        if stop.is_set():
            break
        host = rng.choice(HOSTS)
        try:
            session(where[f"{host} tcp"], f"c{i}s{n}", stats, rng, stop)
        except OSError as e:
            stats.error(f"c{i}: {e}")
        n += 1
        time.sleep(rng.uniform(0.0, 0.5))


def booted(addr, timeout: float = 120) -> None:
    s = socket.create_connection(addr, timeout=timeout)
    buf, end = b"", time.monotonic() + timeout
    s.sendall(b"echo boot''ed\r")
    while b"booted\r\n" + PROMPT not in buf:
        if time.monotonic() > end:
            raise SystemExit(f"host at {addr} never answered: {buf[-300:]!r}")
        d = s.recv(65536)
        if not d:
            raise SystemExit(f"host at {addr} closed")
        buf += d
        if b"Serial input to DOM0" not in buf and PROMPT not in buf:
            continue
        s.sendall(b"echo boot''ed\r")
        s.settimeout(2.0)
        try:
            while b"booted\r\n" + PROMPT not in buf:
                buf += s.recv(65536)
        except TimeoutError:
            pass
        s.settimeout(timeout)
    s.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(seconds: float, clients: int = 20, delay: int = 2000000, report=print) -> dict:
    """Run the soak; returns the figures (and the problems found)."""
    with tempfile.TemporaryDirectory(prefix="xc-soak-") as tmp:
        d = Path(tmp)
        write_lab(d, delay)
        proc, where = start_server(d)
        stop = threading.Event()
        stats = Stats()
        try:
            for host in HOSTS:  # booted: dom0's prompt answers (typing during boot goes to Xen)
                booted(where[f"{host} tcp"])
            stalled = socket.create_connection(where["xen1 tcp-ro"])  # never read from
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            gate = Gate(clients)
            threads = [threading.Thread(target=client_loop, args=(i, where, stats, stop, gate),
                                        daemon=True) for i in range(clients)]  # fmt: skip
            for t in threads:
                t.start()
            time.sleep(min(WARMUP, seconds / 4))
            if not gate.close():
                stats.error("the clients did not pause for the warm-up reading")
            time.sleep(1.0)  # the server sees every close
            rss0, fd0 = rss_kib(proc.pid), fds(proc.pid)
            gate.open()
            end = time.monotonic() + seconds - min(WARMUP, seconds / 4)
            while time.monotonic() < end:
                nap = min(10.0, max(0.1, end - time.monotonic()))
                t0 = time.monotonic()
                time.sleep(nap)
                stats.stall_s = max(stats.stall_s, time.monotonic() - t0 - nap)
                report(f"  {time.strftime('%H:%M:%S')} sessions {stats.sessions} "
                       f"commands {stats.commands} seq lines {stats.seq_lines} "
                       f"RSS {rss_kib(proc.pid) // 1024} MiB fds {fds(proc.pid)}")  # fmt: skip
            stop.set()
            for t in threads:
                t.join(60)
            time.sleep(1.0)  # the server sees every close
            rss1, fd1 = rss_kib(proc.pid), fds(proc.pid)
            stalled.close()
        finally:
            stop.set()
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(30)
        err = (d / "stderr").read_text()
        logs_seq = {h: len(re.findall(rb"seq \d+", (d / f"{h}.log").read_bytes())) for h in HOSTS}
    return {
        "sessions": stats.sessions, "commands": stats.commands, "seq_lines": stats.seq_lines,
        "gaps": stats.gaps, "errors": stats.errors, "rss0_kib": rss0, "rss1_kib": rss1,
        "fd0": fd0, "fd1": fd1, "tracebacks": err.count("Traceback"), "exit": code,
        "logged_seq": logs_seq, "stderr": err, "stall_s": stats.stall_s,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1800.0)
    ap.add_argument("--clients", type=int, default=20)
    a = ap.parse_args()
    r = soak(a.seconds, a.clients)
    growth = 100.0 * (r["rss1_kib"] - r["rss0_kib"]) / r["rss0_kib"]
    print(
        f"{a.seconds:.0f} s, {a.clients} clients + 1 stalled spectator, 3 hosts: "
        f"{r['sessions']} sessions, {r['commands']} commands answered, "
        f"{r['seq_lines']} seq lines checked, gaps {len(r['gaps'])}, errors {len(r['errors'])}"
    )
    print(
        f"RSS after warm-up {r['rss0_kib'] / 1024:.1f} MiB -> end {r['rss1_kib'] / 1024:.1f} MiB "
        f"({growth:+.1f}%, target < 5%); fds with no client attached {r['fd0']} -> {r['fd1']}; "
        f"tracebacks {r['tracebacks']}; exit {r['exit']}; guest lines logged {r['logged_seq']}"
    )
    print(f"longest overrun of the bench's own 10 s sleep: {r['stall_s']:.1f} s")
    for g in (r["gaps"] + r["errors"])[:40]:
        print("  ", g)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    return 0 if not r["gaps"] and not r["errors"] and not r["tracebacks"] else 1


if __name__ == "__main__":
    sys.exit(main())
