"""End-to-end user journeys (issue 2, acceptance 2 and 4) against `xenconsole serve`.

The journey: attach, watch Xen boot to the dom0 prompt, Ctrl-A x3 to Xen, `h`, Ctrl-A x3 back
to dom0, `xl dmesg` shows the `h` output. Over telnet with `xenconsole.expect`, over raw TCP
with a plain socket, with the real `telnet` program driven by pexpect, and on the PTY.
"""

from __future__ import annotations

import re
import shutil
import socket
import time

import pexpect
import pytest

import keyhandlers
from emu.boot import version_lines
from emu.machine import Machine
from xenconsole.expect import Console
from xenconsole.testing import serve

BANNER_FIRST = " __  __            _  _    ____  ____    ___"
XEN_VERSION = "(XEN) Xen version 4.22.0 ("
TO_XEN = "(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)"
TO_DOM0 = "(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)"
PROMPT = "root@dom0:~# "
H_FIRST = "(XEN) 'h' pressed -> showing installed handlers"
GUEST = re.compile(r"^\(d\d+\) ")
# No [[domain]]: nothing but the journey prints, so exact byte checks hold.
HOST_ONLY = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "256M"\n'


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("journey") / "host.toml"
    path.write_text(HOST_ONLY)
    return str(path)


def expected_h_lines() -> list[str]:
    """What `h` must print for the built-in keys, computed from the registry here."""
    table = keyhandlers.installed()
    keys = [kh.key for kh in table]
    assert keys == sorted(keys, key=ord) and len(keys) == len(keyhandlers.KEY_TABLE)
    # show_handlers() prints print_version() first (xen/common/keyhandler.c:131-133).
    lines = [H_FIRST] + [f"(XEN) {ln}" for ln in version_lines(Machine)]
    lines += [f"(XEN)  key '{kh.key}' (ascii '{ord(kh.key):02x}') => {kh.desc}" for kh in table]
    return lines


def lines_of(text: str) -> list[str]:
    """CR LF lines, without guest `(dN)` lines that may interleave when guests run."""
    return [ln for ln in text.replace("\r\n", "\n").split("\n") if not GUEST.match(ln)]


def assert_h_block(text: str) -> None:
    """`text` holds the `h` output as one run of lines, exactly the expected ones."""
    want = expected_h_lines()
    got = lines_of(text)
    assert H_FIRST in got, text[-2000:]
    i = got.index(H_FIRST)
    assert got[i : i + len(want)] == want
    # Exactly one line per installed handler: the next line is no key line.
    nxt = got[i + len(want)] if i + len(want) < len(got) else ""
    assert not nxt.startswith("(XEN)  key "), nxt
    assert sum(1 for ln in got if ln.startswith("(XEN)  key ")) == len(keyhandlers.installed())


def assert_boot(text: str) -> None:
    """The whole boot: banner first, Xen version, the switch to DOM0, then the prompt."""
    lines = lines_of(text)
    assert lines[0] == BANNER_FIRST, lines[:3]
    ver = next(i for i, ln in enumerate(lines) if ln.startswith(XEN_VERSION))
    dom0 = lines.index(TO_DOM0)
    assert 0 < ver < dom0
    assert TO_XEN not in lines[:dom0]
    assert text.endswith(PROMPT)
    assert "Traceback" not in text


@pytest.mark.timeout(60)
def test_journey_telnet_expect_api(config):
    with (
        serve("--config", config, wait=True) as host,
        Console.open(host.urls["telnet"], timeout=20) as con,
    ):
        con.expect_exact(PROMPT, timeout=30)
        assert_boot(con.before + con.after)
        assert con.target == "dom0"
        # Ctrl-A x3: exactly Xen's message, nothing else.
        con.send("\x01\x01\x01")
        con.expect_exact(TO_XEN + "\r\n")
        assert con.before == ""
        assert con.target == "xen"
        con.send("h")
        want = expected_h_lines()
        con.expect_exact(want[-1] + "\r\n")
        assert_h_block(con.before + con.after)
        con.send("\x01\x01\x01")
        con.expect_exact(TO_DOM0 + "\r\n")
        assert con.target == "dom0"
        dmesg = con.run("xl dmesg")
        assert_h_block(dmesg.replace("\n", "\r\n"))
        assert dmesg.count(H_FIRST) == 1
        assert con.exit_status == 0
        # The API's own helpers give the same answers.
        assert con.debug_key("h").splitlines() == want
        assert con.target == "xen"
        assert "Domain-0" in con.run("xl list")
        assert con.target == "dom0"
        assert b"\xff" not in con.transcript  # telnet negotiation never shows
        assert b"Traceback" not in con.transcript


def _read_until(sock: socket.socket, buf: bytearray, needle: bytes, timeout: float = 20) -> int:
    """Read into `buf` until `needle` appears after what was there; return its end offset."""
    start = len(buf)
    deadline = time.monotonic() + timeout
    while True:
        pos = buf.find(needle, start)
        if pos >= 0:
            return pos + len(needle)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} in {bytes(buf[-500:])!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        buf += chunk


@pytest.mark.timeout(60)
def test_journey_raw_tcp_plain_socket(config):
    with serve("--config", config, wait=True) as host:
        sock = socket.create_connection(host.address("tcp"), timeout=10)
        try:
            buf = bytearray()
            end = _read_until(sock, buf, PROMPT.encode(), 30)
            boot = buf[:end].decode()
            assert_boot(boot)
            mark = len(buf)
            sock.sendall(b"\x01\x01\x01")
            end = _read_until(sock, buf, TO_XEN.encode() + b"\r\n")
            assert buf[mark:end] == TO_XEN.encode() + b"\r\n"
            mark = len(buf)
            sock.sendall(b"h")
            end = _read_until(sock, buf, expected_h_lines()[-1].encode() + b"\r\n")
            assert_h_block(buf[mark:end].decode())
            sock.sendall(b"\x01\x01\x01")
            _read_until(sock, buf, TO_DOM0.encode() + b"\r\n")
            mark = len(buf)
            sock.sendall(b"xl dmesg\r\n")  # CR LF from a raw client is one Enter
            end = _read_until(sock, buf, PROMPT.encode())
            out = buf[mark:end].decode()
            assert out.startswith("xl dmesg\r\n")
            assert_h_block(out)
            assert out.count(PROMPT) == 1
            # ... and no second prompt arrives from the LF.
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                buf += sock.recv(100)
            assert b"\xff" not in buf and b"Traceback" not in buf
        finally:
            sock.close()


@pytest.mark.skipif(shutil.which("telnet") is None, reason="the telnet program is not installed")
@pytest.mark.timeout(60)
def test_journey_real_telnet_program(config):
    with serve("--config", config, wait=True) as host:
        h, port = host.address("telnet")
        child = pexpect.spawn(f"telnet {h} {port}", timeout=20, encoding="utf-8")
        try:
            child.expect_exact("Escape character is '^]'.\r\n")
            child.expect_exact(PROMPT, timeout=30)
            assert_boot(child.before + PROMPT)
            child.send("\x01\x01\x01")
            child.expect_exact(TO_XEN + "\r\n")
            assert child.before == ""
            child.send("h")
            child.expect_exact(expected_h_lines()[-1] + "\r\n")
            assert_h_block(child.before + child.after)
            child.send("\x01\x01\x01")
            child.expect_exact(TO_DOM0 + "\r\n")
            child.sendline("xl dmesg")  # telnet sends Enter as CR LF or CR NUL: one Enter
            child.expect_exact("xl dmesg\r\n")
            child.expect_exact(PROMPT)
            assert_h_block(child.before)
            assert child.expect_exact([PROMPT, pexpect.TIMEOUT], timeout=0.5) == 1
            # telnet's own escape still works: Ctrl-] gives its prompt, `quit` leaves.
            child.send("\x1d")
            child.expect_exact("telnet>")
            child.sendline("quit")
            child.expect(pexpect.EOF)
            assert "Traceback" not in (child.before or "")
        finally:
            child.close(force=True)
        assert host.proc.poll() is None  # the server carries on


@pytest.mark.timeout(60)
def test_journey_pty_expect_api_reopen(config):
    """On the PTY (pyserial underneath): journey, close, reopen, and again."""
    with serve("--config", config, wait=True, pty=True) as host:
        with Console.open(host.pty, timeout=20) as con:
            con.expect_exact(PROMPT, timeout=30)
            assert_boot(con.before + con.after)
            con.to_xen()
            assert_h_block(con.debug_key("h").replace("\n", "\r\n"))
            con.to_dom0()
            assert_h_block(con.run("xl dmesg").replace("\n", "\r\n"))
        for _ in range(2):
            with Console.open(host.pty, timeout=20) as con:
                assert con.target is None  # attached after the boot: nothing seen yet
                out = con.debug_key("h")
                assert out.splitlines() == expected_h_lines()
                assert "Domain-0" in con.run("xl list")
                assert con.exit_status == 0
                assert b"Traceback" not in con.transcript
        assert host.proc.poll() is None


@pytest.mark.timeout(60)
def test_journey_default_host_with_guests():
    """The embedded default host (guests running): the API copes with their output."""
    with serve(wait=True) as host, Console.open(host.urls["telnet"], timeout=20) as con:
        con.expect_exact(PROMPT, timeout=30)
        assert_boot(con.before + con.after)
        assert con.debug_key("h").splitlines() == expected_h_lines()
        assert con.run("xl list").splitlines()[1].startswith("Domain-0 ")
        assert con.exit_status == 0
        assert_h_block(con.run("xl dmesg").replace("\n", "\r\n"))
        assert b"Traceback" not in con.transcript
