"""Core debug keys on the serial line: `h`, `*`, `+`, `-`, `G`, `w`, `R`, and the
`(XEN) k args> ` prompt of keys that take arguments.

Keys are pressed as a client would: Ctrl-A x3 hands input to Xen, then the key byte enters
through `Console.serial_rx`. Expected strings are Xen's (xen/common/keyhandler.c,
xen/drivers/char/console.c).
"""

from __future__ import annotations

import contextlib

import pytest
from shell_host import Host

import keyhandlers
from emu.boot import version_lines
from emu.machine import Machine
from keyhandlers import KEY_TABLE, KeyhandlerError, installed
from xenconsole.expect import TIMEOUT, Console
from xenconsole.testing import serve

TO_XEN = b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"


@pytest.fixture
def xen():
    """A booted host whose serial input is with Xen."""
    h = Host()
    assert h.type(b"\x01\x01\x01") == TO_XEN
    yield h
    h.machine.shutdown()


@contextlib.contextmanager
def temp_key(key: str, fn, desc: str, diagnostic: bool = False, **kw):
    """A throwaway key, removed afterwards so other tests see the real table."""
    assert key not in KEY_TABLE
    keyhandlers.register(key, fn, desc, diagnostic, source="test", **kw)
    try:
        yield
    finally:
        KEY_TABLE.pop(key, None)


def lines(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\r\n")
    return text[:-2].split("\r\n")


def test_h_lists_every_handler_in_ascii_order(xen):
    got = lines(xen.type(b"h"))
    table = installed()
    assert [kh.key for kh in table] == sorted(KEY_TABLE)
    assert got[0] == "(XEN) 'h' pressed -> showing installed handlers"
    # show_handlers() prints print_version() first (xen/common/keyhandler.c:131-133,
    # xen/common/version.c:102-110).
    assert got[1:4] == [f"(XEN) {ln}" for ln in version_lines(Machine)]
    assert got[1].startswith("(XEN) Xen version 4.22.0 (xenconsole@emulated) (gcc ")
    assert got[4:] == [
        f"(XEN)  key '{k.key}' (ascii '{ord(k.key):02x}') => {k.desc}" for k in table
    ]
    for fixed in [
        "(XEN)  key '*' (ascii '2a') => print all diagnostics",
        "(XEN)  key '+' (ascii '2b') => increase log level threshold",
        "(XEN)  key '-' (ascii '2d') => decrease log level threshold",
        "(XEN)  key 'G' (ascii '47') => toggle host/guest log level adjustment",
        "(XEN)  key 'R' (ascii '52') => reboot machine",
        "(XEN)  key 'h' (ascii '68') => show this message",
        "(XEN)  key 'w' (ascii '77') => synchronously dump console ring buffer (dmesg)",
    ]:
        assert fixed in got


def test_h_includes_a_newly_registered_key(xen):
    with temp_key("~", lambda m, out, a: None, "a test key"):
        got = lines(xen.type(b"h"))
        assert got[-1] == "(XEN)  key '~' (ascii '7e') => a test key"
    assert "~" not in xen.type(b"h").decode()


def test_star_fires_diagnostic_handlers_irq_first(xen):
    def irq_fn(m, out, args):
        out("irq handler ran")

    def plain_fn(m, out, args):
        out("plain handler ran")

    with (
        temp_key("~", irq_fn, "test irq diag", True, irq=True),
        temp_key("|", plain_fn, "test diag", True),
    ):
        got = lines(xen.type(b"*"))
        diag = [k for k in installed() if k.diagnostic]
        order = [k for k in diag if k.irq] + [k for k in diag if not k.irq]
        assert got[0] == "(XEN) '*' pressed -> firing all diagnostic keyhandlers"
        brackets = [ln for ln in got if ln.startswith("(XEN) [") and ln[8:10] == ": "]
        assert brackets == [f"(XEN) [{k.key}: {k.desc}]" for k in order]
        i = got.index("(XEN) [~: test irq diag]")
        assert got[i + 1] == "(XEN) irq handler ran"
        j = got.index("(XEN) [|: test diag]")
        assert got[j + 1] == "(XEN) plain handler ran"
        assert i < j  # the IRQ one although '~' sorts after '|'
    # Non-diagnostic keys are not fired.
    assert not any("[h: " in ln for ln in got)


def test_plus_minus_and_G_messages(xen):
    # A debug build starts at "All" for both thresholds (loglvl=all guest_loglvl=all).
    ewi = "Errors, warnings and info"
    steps = [
        ("+", "standard", "???", "???"),
        ("-", "standard", "All", "???"),
        ("-", "standard", ewi, "???"),
        ("G", "guest", None, None),
        ("-", "guest", ewi, "All"),
        ("+", "guest", "All", "All"),
        ("G", "standard", None, None),
        ("-", "standard", "Errors and warnings", "???"),
        ("-", "standard", "Errors", "???"),
        ("-", "standard", "Nothing", "???"),
        ("-", "standard", "Nothing", "???"),  # the lower threshold stops at 0
    ]
    for key, adj, lower, upper in steps:
        if key == "G":
            line = f"(XEN) 'G' pressed -> {adj} log level adjustments enabled"
        else:
            line = f"(XEN) '{key}' pressed -> {adj} log level: {lower} (rate limited {upper})"
        assert lines(xen.type(key.encode())) == [line]
        assert xen.machine.console.ring.read().decode().endswith(line + "\n")


def test_w_replays_the_ring_to_serial_not_into_it(xen):
    ring = xen.machine.console.ring
    before = ring.read()
    assert b"(XEN) Xen version 4.22.0" in before
    pressed = b"(XEN) 'w' pressed -> dumping console ring buffer (dmesg)\n"
    out = xen.type(b"w")
    replay = (before + pressed).replace(b"\n", b"\r\n")
    assert out == pressed.replace(b"\n", b"\r\n") + replay
    assert ring.read() == before + pressed  # the replay did not go back into the ring
    # The switch back to dom0 and `xl dmesg` show the ring once, not twice.
    xen.type(b"\x01\x01\x01")
    assert xen.cmd("xl dmesg").count("Xen version 4.22.0") == 1


def test_unknown_keys_are_ignored_silently(xen):
    free = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in KEY_TABLE]
    assert xen.type("".join(free).encode() + b"\x00\x02\x7f\x80\xfe") == b""


def _args_fn(machine, out, args):
    if args and args[0] == "bad":
        raise KeyhandlerError("bad argument 'bad'")
    out(f"args={list(args)}")


def test_args_prompt_on_the_serial_line(xen):
    with temp_key("~", _args_fn, "test args", args="[WORDS...]", pressed="echoing arguments"):
        assert xen.type(b"~") == b"(XEN) '~' pressed -> echoing arguments\r\n(XEN) ~ args> "
        # Typed characters echo; backspace erases; other keys are text now, not keys.
        assert xen.type(b"hx\x7f") == b"hx\b \b"
        assert xen.type(b" 2") == b" 2"
        assert xen.type(b"\r") == b"\r\n(XEN) args=['h', '2']\r\n"
        ring = xen.machine.console.ring.read().decode()
        assert "(XEN) ~ args> h 2\n(XEN) args=['h', '2']\n" in ring
        # Empty line: the defaults.
        xen.type(b"~")
        assert xen.type(b"\r") == b"\r\n(XEN) args=[]\r\n"
        # Ctrl-C cancels: the handler does not run, and the next byte is a key again.
        xen.type(b"~")
        assert xen.type(b"abc\x03") == b"abc^C\r\n"
        assert lines(xen.type(b"h"))[0] == "(XEN) 'h' pressed -> showing installed handlers"
        # Quotes group words; a bad argument is one (XEN) line.
        xen.type(b"~")
        assert xen.type(b"'a b' c\r") == b"'a b' c\r\n(XEN) args=['a b', 'c']\r\n"
        xen.type(b"~")
        assert xen.type(b"bad\r") == b"bad\r\n(XEN) '~': bad argument 'bad'\r\n"
        # Through xl the arguments come from the command line, without a prompt.
        xen.type(b"\x01\x01\x01")
        out = xen.cmd("xl debug-keys ~ x y")
        assert out == "(XEN) '~' pressed -> echoing arguments\r\n(XEN) args=['x', 'y']\r\n"
        # ... and go to the last key only.
        out = xen.cmd("xl debug-keys ~~ z").split("\r\n")
        assert out[1] == "(XEN) args=[]" and out[3] == "(XEN) args=['z']"


@pytest.mark.timeout(60)
def test_R_reboots_to_the_prompt_again():
    with serve() as host, Console.open(host.urls["telnet"], timeout=20) as con:
        con.run("xl debug-keys h")
        con.to_xen()
        con.send("R")
        con.expect_exact("(XEN) 'R' pressed -> rebooting machine\r\n")
        con.expect_exact(" __  __            _  _    ____  ____    ___\r\n")
        con.expect_exact("(XEN) Xen version 4.22.0 (")
        assert con.target == "xen"  # a new boot gives input to Xen
        con.expect_exact(
            "(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"
        )
        con.expect_exact("root@dom0:~# ")
        assert con.target == "dom0"
        dmesg = con.run("xl dmesg")
        assert "'R' pressed" not in dmesg and "'h' pressed" not in dmesg  # a fresh ring
        assert dmesg.count("(XEN) Xen version 4.22.0") == 1
        assert "Domain-0" in con.run("xl list")
        # And again, through xl this time.
        con.sendline("xl debug-keys R")
        con.expect_exact("(XEN) 'R' pressed -> rebooting machine\r\n")
        con.expect_exact("root@dom0:~# ")  # the old shell's prompt
        con.expect_exact("(XEN) Xen version 4.22.0 (")
        con.expect_exact("root@dom0:~# ")
        assert con.run("echo $?") == "0\n"
        # Two presses before the restart: one reboot.
        con.to_xen()
        con.send("RR")
        con.expect_exact("(XEN) 'R' pressed -> rebooting machine\r\n" * 2)
        con.expect_exact("root@dom0:~# ")
        assert con.before.count("(XEN) Xen version 4.22.0 (") == 1
        assert con.expect_exact(["(XEN) Xen version", TIMEOUT], timeout=1.5) == 1
        assert b"Traceback" not in con.transcript


@pytest.mark.timeout(60)
def test_R_through_the_expect_api(tmp_path):
    """`debug_key("R")`: the key's line, then what follows until the line is quiet (the new
    boot, all or part of it); the next `run` waits out whatever is left of the boot."""
    cfg = tmp_path / "host.toml"
    cfg.write_text('[host]\nmemory = "1G"\ndom0_mem = "256M"\n')
    with serve("--config", str(cfg)) as host, Console.open(host.urls["tcp"], timeout=20) as con:
        assert con.debug_key("R").startswith("(XEN) 'R' pressed -> rebooting machine\n")
        assert con.run("echo after-reboot") == "after-reboot\n"
        assert con.target == "dom0" and not con.booting
        assert con.transcript.count(b"(XEN) Xen version 4.22.0") >= 1
        assert "'R' pressed" not in con.run("xl dmesg")
