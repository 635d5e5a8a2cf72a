"""`xenconsole.expect` against a real `xenconsole serve` (one host shared by the module)."""

from __future__ import annotations

import io
import os
import socket
import textwrap
from pathlib import Path

import pytest

from xenconsole.expect import (
    EOF,
    TIMEOUT,
    CommandError,
    Console,
    ConsoleError,
    keys_in,
    strip_ansi,
)
from xenconsole.testing import ServeError, serve, xenconsole_host  # noqa: F401 (fixture)

HAS_RFC2217 = (Path(__file__).parents[2] / "xenconsole/transports/rfc2217.py").exists()
TO_XEN = "(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)"
TO_DOM0 = "(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)"

PLUGIN = """
from keyhandlers import KeyhandlerError, keyhandler


@keyhandler("~", "echo arguments (test)", args="[WORDS...]", pressed="echoing arguments")
def echo_args(machine, out, args):
    if args[:1] == ("bad",):
        raise KeyhandlerError("bad argument")
    out(f"args={list(args)}")
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    d = tmp_path_factory.mktemp("expect")
    (d / "host.toml").write_text('[host]\nmemory = "1G"\ndom0_mem = "256M"\n')
    (d / "echo_plugin.py").write_text(textwrap.dedent(PLUGIN))
    env = {"PYTHONPATH": f"{d}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ("--config", str(d / "host.toml"), "--plugin", "echo_plugin")
    with serve(*args, pty=True, rfc2217=HAS_RFC2217, env=env) as h:
        yield h


def sends(con: Console, data: bytes) -> int:
    return sum(1 for _, d, b in con.events if d == "send" and b == data)


def test_bad_urls():
    with pytest.raises(ValueError, match="HOST:PORT"):
        Console.open("telnet://localhost")
    with pytest.raises(ValueError, match="HOST:PORT"):
        Console.open("socket://127.0.0.1:http")


def test_connection_refused():
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConsoleError, match="cannot connect"):
        Console.open(f"socket://127.0.0.1:{port}")
    with pytest.raises(ConsoleError, match="no such device"):
        Console.open("/dev/pts/no-such-pty")
    with pytest.raises(ValueError, match="unknown scheme"):
        Console.open("ftp://127.0.0.1:21")


def test_switching_sends_ctrl_a_only_when_needed(host):
    with Console.open(host.urls["tcp"], timeout=15) as con:
        assert con.target is None
        con.to_xen()
        assert con.target == "xen"
        assert TO_XEN in con.before + con.after
        n = sends(con, b"\x01\x01\x01")
        assert n in (1, 2)  # from an unknown state the first switch may land on DOM0
        con.to_xen()
        assert sends(con, b"\x01\x01\x01") == n
        con.to_dom0()
        assert con.target == "dom0" and con.after.startswith(TO_DOM0)
        assert sends(con, b"\x01\x01\x01") == n + 1
        con.to_dom0()
        assert sends(con, b"\x01\x01\x01") == n + 1


def test_target_follows_switches_typed_by_hand(host):
    with Console.open(host.urls["telnet"], timeout=15) as con:
        con.to_dom0()
        con.send("\x01\x01\x01")
        con.expect_exact(TO_XEN)
        assert con.target == "xen"
        con.send("\x01\x01\x01")
        con.expect_exact(TO_DOM0)
        assert con.target == "dom0"


def test_debug_key_output(host):
    with Console.open(host.urls["telnet"], timeout=15) as con:
        out = con.debug_key("h")
        lines = out.splitlines()
        assert lines[0] == "(XEN) 'h' pressed -> showing installed handlers"
        assert "(XEN)  key '~' (ascii '7e') => echo arguments (test)" in lines
        assert lines[-1] == "(XEN)  key '~' (ascii '7e') => echo arguments (test)"
        assert "\r" not in out and out.endswith("\n")
        keys = keys_in(out)
        assert keys == sorted(keys) and "h" in keys and keys[-1] == "~"
        assert con.target == "xen"  # input stays with Xen


def test_debug_key_with_arguments_answers_the_prompt(host):
    with Console.open(host.urls["telnet"], timeout=15) as con:
        out = con.debug_key("~", "a", "b c")
        assert out == "(XEN) '~' pressed -> echoing arguments\n(XEN) args=['a', 'b c']\n"
        assert "(XEN) ~ args> a 'b c'\r\n" in con.transcript.decode()
        assert con.debug_key("~") == "(XEN) '~' pressed -> echoing arguments\n(XEN) args=[]\n"
        assert con.debug_key("~", "bad").splitlines()[-1] == "(XEN) '~': bad argument"
        with pytest.raises(ConsoleError, match="did not prompt"):
            con.debug_key("h", "x")
        with pytest.raises(ValueError):
            con.debug_key("hh")


def test_run_output_and_status(host):
    with Console.open(host.urls["telnet"], timeout=15) as con:
        assert con.run("echo hi") == "hi\n"
        assert con.exit_status == 0
        assert con.target == "dom0"
        assert con.run("false") == ""
        assert con.exit_status == 1
        assert con.run("foo") == "-bash: foo: command not found\n"
        assert con.exit_status == 127
        with pytest.raises(CommandError) as e:
            con.run("xl list nosuch", check=True)
        assert e.value.status == 1
        assert e.value.output == "nosuch is an invalid domain identifier (rc=-6)\n"
        out = con.run("xl list")
        assert (
            out.splitlines()[0]
            == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
        )
        # Xen's printk output on the line during the command is part of its output.
        assert con.run("xl debug-keys h").startswith("(XEN) 'h' pressed -> showing")
        with pytest.raises(ValueError):
            con.run("echo a\necho b")


def test_run_after_half_typed_line(host):
    with Console.open(host.urls["tcp"], timeout=15) as con:
        con.to_dom0()
        con.send("garbage that is never run")
        assert con.run("echo clean") == "clean\n"
        assert con.exit_status == 0


def test_telnet_negotiation_never_visible_and_0xff_escaped(host):
    with Console.open(host.urls["telnet"], timeout=15, encoding=None) as con:
        con.to_dom0()
        assert isinstance(con.before, bytes)
        # 0xFF goes out as IAC IAC; the UART keeps 7 bits (serial.c: c & 0x7f), so dom0
        # gets DEL and erases the 'c'.
        con.send(b"abc\xff")
        con.expect_exact(b"abc\b \b")
        assert con.run("echo $?") == "0\n"
        assert b"\xff" not in con.transcript  # no negotiation byte ever shows
        him = con.link.link.codec.him
        assert him.get(1) and him.get(3)  # server: ECHO, SGA


def test_sendcontrol_and_expect_api(host):
    with Console.open(host.urls["tcp"], timeout=15) as con:
        con.to_dom0()
        con.send("abc")
        con.sendcontrol("c")
        idx = con.expect([r"\^C\r\n(root@dom0:~# )", "never"])
        assert idx == 0 and con.match.group(1) == "root@dom0:~# "
        assert con.after.endswith("root@dom0:~# ")
        con.sendline("echo $?")
        con.expect_exact("130\r\n")


def test_timeout_says_what_was_seen(host):
    with Console.open(host.urls["tcp"], timeout=15) as con:
        con.run("echo marker-before-timeout")
        with pytest.raises(TIMEOUT) as e:
            con.expect("this never appears", timeout=0.3)
        assert "last output" in str(e.value)
        assert con.expect(["never", TIMEOUT], timeout=0.2) == 1


def test_logfile_and_transcript(host, tmp_path):
    log = io.StringIO()
    with Console.open(host.urls["telnet"], timeout=15, logfile=log) as con:
        con.run("echo logged")
        con.write_transcript(str(tmp_path / "t.txt"))
    text = log.getvalue()
    assert "echo logged" in text and "logged\r\n" in text
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert any(" send " in ln and "echo logged" in ln for ln in lines)
    assert any(" recv " in ln for ln in lines)
    assert con.closed
    con.close()  # twice is harmless


def test_pty_console(host):
    for _ in range(2):  # open, close, reopen
        with Console.open(host.pty, timeout=15) as con:
            assert con.run("echo pty") == "pty\n"
            assert (
                con.debug_key("~", "x")
                == "(XEN) '~' pressed -> echoing arguments\n(XEN) args=['x']\n"
            )


@pytest.mark.skipif(not HAS_RFC2217, reason="no RFC 2217 backend in this build")
def test_rfc2217_console(host):
    with Console.open(host.urls["rfc2217"], timeout=15) as con:
        assert "Domain-0" in con.run("xl list")
        assert con.debug_key("h").startswith("(XEN) 'h' pressed -> showing installed handlers\n")


def test_eof_when_the_server_goes_away(host):
    with serve("--config", _config_of(host)) as h:
        con = Console.open(h.urls["tcp"], timeout=15)
    with pytest.raises(EOF):
        con.expect("never")
    assert not con.isalive()
    con.close()


def test_no_traceback_in_any_transcript(host):
    with Console.open(host.urls["tcp"], timeout=15) as con:
        con.run("xl dmesg")
        con.debug_key("w")
        assert b"Traceback" not in con.transcript


def test_strip_ansi():
    assert strip_ansi("\x1b[H\x1b[2Ja\r\nb\x1b[0m") == "a\nb"


def _config_of(host) -> str:
    return host.proc.args[host.proc.args.index("--config") + 1]


def test_serve_cleans_up(host):
    with serve("--config", _config_of(host)) as h:
        proc = h.proc
        assert set(h.urls) == {"telnet", "tcp"}
        assert h.ready_lines[-1] == "xenconsole: ready"
    assert proc.poll() == 0  # SIGTERM: a clean exit


def test_serve_reports_why_it_did_not_start():
    with pytest.raises(ServeError, match="xenconsole: error: plugin: No module named 'nope'"):
        with serve("--plugin", "nope"):
            pass


def test_served_host_console_helper(host):
    with host.console("tcp", timeout=15) as con:
        assert con.run("echo helper") == "helper\n"
    assert host.stderr_text() == ""  # nothing went wrong on the server side


def test_the_pytest_fixture(xenconsole_host):  # noqa: F811 (the imported fixture)
    assert set(xenconsole_host.urls) == {"telnet", "tcp", "pty"}
    with xenconsole_host.console("telnet", timeout=15) as con:
        con.to_dom0()  # booted already: no boot to wait out
        assert not con.booting
        assert con.run("xl list").splitlines()[1].startswith("Domain-0 ")
