"""Issue 13 part 7: loopback by default; anything else needs TLS client certificates or a
password. Tests bind only 127.0.0.1: the non-loopback rule is checked by its refusal at
start, and the TLS and password listeners run on 127.0.0.1 with `--require-auth`."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys

import pytest

from xenconsole.access import MAX_LOCKOUT, hash_password
from xenconsole.testing import serve

PROMPT = b"root@dom0:~# "
pytestmark = pytest.mark.e2e
HOST_ONLY = '[host]\nmemory = "256M"\ncpus = 1\ndom0_mem = "128M"\n'
XC = [sys.executable, "-m", "xenconsole"]


def host_only(tmp_path) -> tuple[str, str]:
    cfg = tmp_path / "host.toml"
    cfg.write_text(HOST_ONLY)
    return ("--config", str(cfg))


def recv_until(sock, pattern: bytes, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while not re.search(pattern, buf):
        d = sock.recv(65536)
        if not d:
            raise AssertionError(f"closed; got {buf[-300:]!r}")
        buf += d
    return buf


def recv_all(sock, timeout: float = 10) -> bytes:
    """Everything until the server closes."""
    sock.settimeout(timeout)
    buf = b""
    while d := sock.recv(65536):
        buf += d
    return buf


@pytest.mark.timeout(60)
def test_non_loopback_listener_without_auth_refuses_to_start(tmp_path):
    for args, line in [
        (["--telnet", "0.0.0.0:0"], "--telnet 0.0.0.0:0: not loopback"),
        (["--no-telnet", "--tcp", "192.0.2.1:0"], "--tcp 192.0.2.1:0: not loopback"),
        (["--telnet", "127.0.0.1:0", "--telnet-ro", "[::]:0"], "--telnet-ro :::0: not loopback"),
        (["--telnet", "127.0.0.1:0", "--require-auth"], "--telnet 127.0.0.1:0: --require-auth"),
    ]:
        r = subprocess.run([*XC, "serve", *host_only(tmp_path), *args], capture_output=True,
                           timeout=30)  # fmt: skip
        assert r.returncode == 2 and r.stdout == b"", r
        assert r.stderr.decode() == (
            f"xenconsole: error: {line}; a console off this machine needs "
            "--tls-cert/--tls-key/--tls-ca (client certificates) or --password-file\n"
        )
    r = subprocess.run([*XC, "serve", "--tls-cert", "x.pem"], capture_output=True, timeout=30)
    assert r.stderr == b"xenconsole: error: TLS needs all of --tls-cert, --tls-key and --tls-ca\n"


@pytest.fixture
def password_file(tmp_path):
    f = tmp_path / "passwd"
    f.write_text("# lab users\nalice:" + hash_password("s3cret pass") + "\n")
    return f


@pytest.mark.timeout(120)
def test_password_listener_wrong_refused_right_attached(tmp_path, password_file):
    args = (*host_only(tmp_path), "--password-file", str(password_file), "--require-auth")
    with serve(*args, tcp=True, telnet=False, wait=True) as host:
        bad = socket.create_connection(host.address("tcp"))
        assert recv_until(bad, rb"Password: $") == b"Password: "
        bad.sendall(b"guess\r")
        assert recv_all(bad) == b"\r\nLogin incorrect\r\n"  # and not one console byte
        good = socket.create_connection(host.address("tcp"))
        recv_until(good, rb"Password: $")
        good.sendall(b"s3cret pass\r\n")
        out = recv_until(good, re.escape(PROMPT) + b"$", 60)  # the host powered on for it
        assert out.startswith(b"\r\n") and b"Debian GNU/Linux 12 dom0 hvc0" in out
        good.sendall(b"echo in\r")
        assert recv_until(good, rb"in\r\n" + re.escape(PROMPT) + b"$").endswith(b"in\r\n" + PROMPT)
        good.close()
        assert "xenconsole: login failed from 127.0.0.1 (1 in a row)" in host.stderr_text()
        assert "xenconsole: login as alice from 127.0.0.1" in host.stderr_text()


@pytest.mark.timeout(300)
def test_brute_force_is_rate_limited_and_others_keep_working(tmp_path, password_file):
    args = (*host_only(tmp_path), "--password-file", str(password_file), "--require-auth")
    with serve(*args, tcp=True, telnet=False, wait=True) as host:
        me = socket.create_connection(host.address("tcp"))
        recv_until(me, rb"Password: $")
        me.sendall(b"s3cret pass\r")
        recv_until(me, re.escape(PROMPT) + b"$", 60)
        prompted = refused = answered = 0
        for i in range(1000):
            s = socket.create_connection(host.address("tcp"))
            first = recv_until(s, rb"Password: $|later\r\n$")
            if first == b"Password: ":
                prompted += 1
                s.sendall(b"wrong%d\r" % i)
                assert recv_all(s) == b"\r\nLogin incorrect\r\n"
            else:
                refused += 1
                assert first == b"too many failed logins; try again later\r\n"
            s.close()
            if i % 100 == 99:  # the logged-in user is served all along
                me.sendall(b"echo still-here %d\r" % i)
                recv_until(me, b"still-here %d\r\n" % i + re.escape(PROMPT) + b"$")
                answered += 1
        assert answered == 10 and prompted + refused == 1000
        # 3 free failures, then lockouts of 1, 2, 4 ... 60 s: few passwords were checked.
        checked = host.stderr_text().count("xenconsole: login failed from 127.0.0.1")
        assert checked == prompted
        assert prompted <= 3 + 20, prompted
        assert refused >= 1000 - 23
        assert MAX_LOCKOUT == 60.0
        me.close()


def openssl(*args: str, cwd) -> None:
    if shutil.which("openssl") is None:  # .ci/run installs it
        pytest.skip("the openssl program is not installed (it makes the test's certificates)")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=lab CA", cwd=d)  # fmt: skip
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                f"{name}.ext", cwd=d)  # fmt: skip
    return d


@pytest.mark.timeout(120)
def test_tls_listener_needs_a_client_certificate(tmp_path, pki):
    args = (*host_only(tmp_path), "--require-auth", "--tls-cert", str(pki / "server.pem"),
            "--tls-key", str(pki / "server.key"), "--tls-ca", str(pki / "ca.pem"))  # fmt: skip
    with serve(*args, tcp=True, telnet=False, wait=True) as host:
        addr = host.address("tcp")
        # Without a certificate: the handshake fails, not one console byte arrives.
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        raw = socket.create_connection(addr)
        got = b""
        with pytest.raises((ssl.SSLError, ConnectionError)):
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            s.settimeout(10)
            while d := s.recv(65536):  # TLS 1.3: the refusal arrives after the handshake
                got += d
            raise ConnectionError("closed")
        assert got == b""
        # A plain TCP client gets nothing readable either.
        plain = socket.create_connection(addr)
        plain.sendall(b"echo hi\r")
        assert b"root@dom0" not in recv_all(plain)
        # With the client certificate: the console.
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        s = ctx.wrap_socket(socket.create_connection(addr), server_hostname="127.0.0.1")
        recv_until(s, re.escape(PROMPT) + b"$", 60)
        s.sendall(b"echo over-tls\r")
        assert recv_until(s, rb"over-tls\r\n" + re.escape(PROMPT) + b"$").endswith(
            b"over-tls\r\n" + PROMPT
        )
        s.close()
