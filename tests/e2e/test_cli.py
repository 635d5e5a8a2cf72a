"""The `xenconsole` command line (docs/contract.md): bad options, ready lines, signals, `keys`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import keyhandlers
from xenconsole import cli
from xenconsole.expect import EOF, Console
from xenconsole.testing import serve

XC = [sys.executable, "-m", "xenconsole"]
HAS_RFC2217 = (Path(__file__).parents[2] / "xenconsole/transports/rfc2217.py").exists()


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*XC, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.toml").write_text('[host\nmemory = "1G"\n')
    (d / "unknown_key.toml").write_text('[host]\nmemory = "1G"\nbogus = 1\n')
    (d / "unknown_table.toml").write_text('[hots]\nmemory = "1G"\n')
    (d / "bad_domain.toml").write_text('[[domain]]\nname = "a"\nmemory = "lots"\n')
    (d / "bad_size.toml").write_text('[host]\nmemory = "4X"\n')
    (d / "host_only.toml").write_text('[host]\nmemory = "1G"\ndom0_mem = "256M"\n')
    return d


PORT = "(expected [HOST:]PORT)"
ENOENT = "No such file or directory"
BOTH = "--telnet and --no-telnet cannot be used together"
BAD_OPTIONS = [
    (["--memory", "foo"], "invalid size: 'foo'"),
    (["--memory", "1T"], "host memory must be between 64M and 64G, got 1048576M"),
    (["--dom0-mem", "3G", "--memory", "4G"], "dom0 memory must be at most half of host memory"),
    (["--cpus", "0"], "cpus must be between 1 and 64, got 0"),
    (["--cpus", "two"], "--cpus: invalid number 'two'"),
    (["--telnet", "127.0.0.1:99999"], f"--telnet: invalid port in '127.0.0.1:99999' {PORT}"),
    (["--tcp", "localhost:http"], f"--tcp: invalid port in 'localhost:http' {PORT}"),
    (["--tcp", ""], f"--tcp: invalid port in '' {PORT}"),
    (["--rfc2217", ""], f"--rfc2217: invalid port in '' {PORT}"),
    (["--telnet", "", "--no-telnet"], "--telnet and --no-telnet cannot be used together"),
    (
        ["--telnet", "127.0.0.1:0", "--no-telnet"],
        "--telnet and --no-telnet cannot be used together",
    ),
    (["--config", "/nonexistent/h.toml"], f"cannot read config /nonexistent/h.toml: {ENOENT}"),
    (
        ["--config", "{d}/bad.toml"],
        "{d}/bad.toml: Expected ']' at the end of a table declaration (at line 1, column 6)",
    ),
    (["--config", "{d}/unknown_key.toml"], "{d}/unknown_key.toml: [host]: unknown key 'bogus'"),
    (["--config", "{d}/unknown_table.toml"], "{d}/unknown_table.toml: unknown table 'hots'"),
    (
        ["--config", "{d}/bad_domain.toml"],
        "{d}/bad_domain.toml: domain 0: memory must be an integer, got 'lots'",
    ),
    (["--config", "{d}/bad_size.toml"], "invalid size: '4X'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--memory"], "argument --memory: expected one argument"),
    (["--plugin", "no_such_plugin_module"], "plugin: No module named 'no_such_plugin_module'"),
    (["--log", "/"], "cannot open log /: Is a directory"),
    (["--log-events"], "--log-events needs --log FILE"),
    (["--pty", "/nonexistent/dir/con"], f"cannot create PTY link /nonexistent/dir/con: {ENOENT}"),
]


# Options that fail before anything is imported, listened on or loaded: checked in-process
# (fast); the rest, and a sample of these, run the real command.
IN_PROCESS = {
    "--memory",
    "--dom0-mem",
    "--cpus",
    "--config",
    "--bogus",
    "--tcp",
    "--rfc2217",
    "--telnet",
}
SUBPROCESS_SAMPLE = {"invalid size: 'foo'", "unrecognized arguments: --bogus"}


@pytest.mark.parametrize("args, message", BAD_OPTIONS)
def test_bad_option_is_one_line_and_exit_2(files, args, message, capsys):
    option = args[0]
    args = [a.replace("{d}", str(files)) for a in args]
    message = message.replace("{d}", str(files))
    if "--telnet" not in args:
        args = ["--telnet", "127.0.0.1:0", *args]  # never the default port 4555
    argv = ["serve", "--no-wait", *args]
    if option in IN_PROCESS and message not in SUBPROCESS_SAMPLE:
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse's own errors
            rc = e.code
        out, err = capsys.readouterr()
        assert (rc, out, err) == (2, "", f"xenconsole: error: {message}\n")
        return
    r = run(*argv)
    assert r.returncode == 2
    assert r.stdout == ""  # nothing half-started: no ready line
    assert r.stderr == f"xenconsole: error: {message}\n"


def test_signal_right_after_ready_is_a_clean_exit():
    for sig in (signal.SIGTERM, signal.SIGINT):
        with serve() as h:
            h.proc.send_signal(sig)  # before the reactor runs, perhaps
            assert h.proc.wait(20) == 0


def test_port_already_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for args in (
            ["--telnet", f"127.0.0.1:{port}"],
            ["--telnet", "127.0.0.1:0", "--tcp", f"{port}"],
        ):
            r = run("serve", "--no-wait", *args)
            assert r.returncode == 2
            assert r.stdout == ""
            assert (
                r.stderr
                == f"xenconsole: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
            )


def test_ready_lines_are_exact(files):
    with serve("--config", str(files / "host_only.toml"), pty=True, rfc2217=HAS_RFC2217) as h:
        lines = h.ready_lines
        kinds = ["telnet", "tcp"] + (["rfc2217"] if HAS_RFC2217 else []) + ["pty"]
        assert len(lines) == len(kinds) + 1
        for line, kind in zip(lines, kinds, strict=False):
            if kind == "pty":
                assert re.fullmatch(r"xenconsole: pty /dev/pts/\d+", line), line
            else:
                assert re.fullmatch(rf"xenconsole: {kind} 127\.0\.0\.1:\d+", line), line
                assert not line.endswith(":0")
        assert lines[-1] == "xenconsole: ready"
        # Every advertised endpoint answers.
        for url in h.urls.values():
            with Console.open(url, timeout=15) as con:
                assert con.run("echo up") == "up\n"


def test_pty_link(files, tmp_path):
    link = tmp_path / "console"
    cfg = str(files / "host_only.toml")
    with serve("--pty", str(link), "--config", cfg, telnet=False, tcp=False) as h:
        assert h.ready_lines[0] == f"xenconsole: pty {os.readlink(link)}"
        with Console.open(str(link), timeout=15) as con:
            assert con.run("echo via-link") == "via-link\n"
    assert not link.exists()  # removed at exit


def _signal_with_client(sig: int, *args: str) -> None:
    """Attach a client, boot, run a command, then `sig`: exit 0, nothing on stdout, no trace."""
    proc = subprocess.Popen(
        [*XC, "serve", "--telnet", "127.0.0.1:0", "--tcp", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        ready = [proc.stdout.readline().strip() for _ in range(3)]
        assert ready[2] == "xenconsole: ready"
        url = "socket://" + ready[1].split(" ", 2)[2]
        with Console.open(url, timeout=20) as con:  # powers the host on (wait mode)
            con.expect_exact("root@dom0:~# ", timeout=30)
            assert "Domain-0" in con.run("xl list")
            proc.send_signal(sig)
            con.expect(EOF, timeout=15)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (0, ""), err[-2000:]
    assert "Traceback" not in err, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_cleanly(files, sig):
    _signal_with_client(sig, "--config", str(files / "host_only.toml"))


@pytest.mark.parametrize("attempt", range(4))
def test_sigterm_with_guests_running_exits_cleanly(attempt):
    # Several times: the interpreter's teardown used to SIGSEGV about 1 run in 6.
    _signal_with_client(signal.SIGTERM)


def test_keys_lists_every_handler():
    r = run("keys")
    assert r.returncode == 0 and r.stderr == ""
    keyhandlers.load_entry_points()
    want = ["'h' pressed -> showing installed handlers"]
    want += [
        f" key '{k.key}' (ascii '{ord(k.key):02x}') => {k.desc}" for k in keyhandlers.installed()
    ]
    assert r.stdout.splitlines() == want
    assert " key 'h' (ascii '68') => show this message" in want


def test_keys_bad_plugin():
    r = run("keys", "--plugin", "no_such_plugin_module")
    assert r.returncode == 2
    assert r.stderr == "xenconsole: error: plugin: No module named 'no_such_plugin_module'\n"


def test_no_subcommand_and_help():
    r = run()
    assert r.returncode == 2 and "serve" in r.stdout
    r = run("serve", "--help")
    assert r.returncode == 0 and "--no-telnet" in r.stdout
    r = run("frobnicate")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("xenconsole: error: ")
