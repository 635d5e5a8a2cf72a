"""Access control for listeners (issue 13 part 7).

Loopback listeners stay open, as a local serial line is. A listener on any other address
needs TLS with client certificates (`--tls-cert`, `--tls-key`, `--tls-ca`: Twisted's TLS,
the client must present a certificate signed by the CA) or a password prompt
(`--password-file`: scrypt hashes, one `NAME:scrypt:N:R:P:SALT:HASH` line each, written by
`xenconsole passwd NAME`); without either `xenconsole serve` refuses to start.
`--require-auth` applies the same rule to loopback listeners too (for tests, or a shared
machine).

Both are applied without touching the transports: a transport listens through the reactor
it is given, and `AuthReactor.listenTCP` listens with TLS (`listenSSL`) or wraps the
transport's factory in a password gate, whose client only reaches the hub after a good
password. Failed logins are logged on stderr and rate limited per source address: after
`FREE_FAILURES` failures an address is locked out for 1 s, doubling per further failure up
to `MAX_LOCKOUT`; a locked-out attempt is refused at once, without checking any password,
so a brute-force loop costs the server almost nothing. Hash checks run off the reactor's
thread, so the console never waits for them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from xenconsole.options import UsageError, is_loopback

FREE_FAILURES = 3
MAX_LOCKOUT = 60.0
MAX_PASSWORD_LINE = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
_IAC_SEQ = re.compile(rb"\xff[\xfb-\xfe].|\xff[\xf0-\xfa]|\xff\xff", re.S)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt:N:R:P:SALT:HASH` (base64) for `password`."""
    salt = os.urandom(16) if salt is None else salt
    h = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{b64(salt).decode()}:{b64(h).decode()}"


@dataclass(frozen=True)
class Hash:
    name: str
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def check(self, password: bytes) -> bool:
        h = hashlib.scrypt(password, salt=self.salt, n=self.n, r=self.r, p=self.p,
                           maxmem=256 << 20, dklen=len(self.digest))  # fmt: skip
        return hmac.compare_digest(h, self.digest)


def load_password_file(path: str) -> list[Hash]:
    """The hashes of a password file; UsageError naming the bad line."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        try:
            if len(parts) != 7 or parts[1] != "scrypt":
                raise ValueError
            out.append(Hash(parts[0], int(parts[2]), int(parts[3]), int(parts[4]),
                            base64.b64decode(parts[5], validate=True),
                            base64.b64decode(parts[6], validate=True)))  # fmt: skip
        except ValueError:
            raise UsageError(
                f"{path}:{n}: expected NAME:scrypt:N:R:P:SALT:HASH (xenconsole passwd NAME)"
            ) from None
    if not out:
        raise UsageError(f"{path}: no password hashes")
    return out


class RateLimiter:
    """Failed logins per source address, with a doubling lockout."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[str, int] = {}
        self.locked_until: dict[str, float] = {}
        self.refused = 0

    def locked(self, host: str) -> bool:
        return self.clock() < self.locked_until.get(host, 0.0)

    def failed(self, host: str) -> int:
        n = self.failures.get(host, 0) + 1
        self.failures[host] = n
        if n >= FREE_FAILURES:
            self.locked_until[host] = self.clock() + min(MAX_LOCKOUT, 2.0 ** (n - FREE_FAILURES))
        return n

    def succeeded(self, host: str) -> None:
        self.failures.pop(host, None)
        self.locked_until.pop(host, None)


@dataclass
class AccessConfig:
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    hashes: list[Hash] = field(default_factory=list)
    require: bool = False  # --require-auth: loopback listeners too

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def needs_auth(self, host: str) -> bool:
        return self.require or not is_loopback(host)


def add_options(s) -> None:
    s.add_argument("--tls-cert", metavar="FILE")
    s.add_argument("--tls-key", metavar="FILE")
    s.add_argument("--tls-ca", metavar="FILE")
    s.add_argument("--password-file", metavar="FILE")
    s.add_argument("--require-auth", action="store_true")


def parse(args, addresses: list[tuple[str, Any]]) -> AccessConfig:
    """Check the access options against the listeners (`(flag, Address)` pairs): a listener
    that needs authentication and has none configured is refused in one line."""
    cfg = AccessConfig(require=bool(getattr(args, "require_auth", False)))
    cfg.tls_cert = getattr(args, "tls_cert", None)
    cfg.tls_key = getattr(args, "tls_key", None)
    cfg.tls_ca = getattr(args, "tls_ca", None)
    tls = [cfg.tls_cert, cfg.tls_key, cfg.tls_ca]
    if any(tls) and not all(tls):
        raise UsageError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    for path in filter(None, tls):
        if not os.path.isfile(path):
            raise UsageError(f"cannot read {path}: no such file")
    if getattr(args, "password_file", None):
        cfg.hashes = load_password_file(args.password_file)
    if not cfg.tls and not cfg.hashes:
        for flag, addr in addresses:
            if cfg.needs_auth(addr.host):
                why = "not loopback" if not is_loopback(addr.host) else "--require-auth"
                raise UsageError(
                    f"{flag} {addr.host}:{addr.port}: {why}; a console off this machine needs "
                    "--tls-cert/--tls-key/--tls-ca (client certificates) or --password-file"
                )
    return cfg


def tls_context(cfg: AccessConfig):
    """Twisted's TLS options: our certificate, and a client certificate signed by the CA
    required of every client."""
    from twisted.internet import ssl

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    try:
        cert = ssl.PrivateCertificate.loadPEM(read(cfg.tls_cert) + b"\n" + read(cfg.tls_key))
        ca = ssl.Certificate.loadPEM(read(cfg.tls_ca))
    except Exception as e:  # OpenSSL's errors are many kinds; one line either way
        raise UsageError(f"TLS: cannot load the certificate or key: {e}") from None
    return cert.options(ca)  # verify=True, requireCertificate=True


class Gate(protocol.Protocol):
    """Holds a connection back from the transport's own protocol until `open()`: the client
    reaches the hub (attach, output, input) only then."""

    def __init__(self, factory, addr) -> None:
        self.gate = factory
        self.addr = addr
        self.host = getattr(addr, "host", "?")
        self.inner: protocol.Protocol | None = None

    def open(self) -> None:
        self.inner = self.gate.wrapped.buildProtocol(self.addr)
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


@implementer(IHandshakeListener)
class TLSGate(Gate):
    """With TLS, the client is let in once the handshake (with its certificate) is done; a
    client without a good certificate never gets past it and never sees a byte."""

    def handshakeCompleted(self) -> None:
        self.open()


class TLSGateFactory(protocol.ServerFactory):
    def __init__(self, wrapped: protocol.Factory) -> None:
        self.wrapped = wrapped

    def buildProtocol(self, addr) -> TLSGate:
        return TLSGate(self, addr)


class PasswordGate(Gate):
    """Asks for a password; then hands the connection to the transport's own protocol."""

    def __init__(self, factory: PasswordGateFactory, addr) -> None:
        super().__init__(factory, addr)
        self.line = bytearray()
        self.checking = False

    def connectionMade(self) -> None:
        if self.gate.limiter.locked(self.host):
            self.gate.limiter.refused += 1
            self.transport.write(b"too many failed logins; try again later\r\n")
            self.transport.loseConnection()
            return
        self.transport.write(b"Password: ")

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self.checking:
            return  # typed ahead of the answer: dropped, as a login prompt does
        self.line += _IAC_SEQ.sub(b"", data)
        m = re.search(rb"[\r\n]", self.line)
        if m is None:
            if len(self.line) > MAX_PASSWORD_LINE:
                self.transport.loseConnection()
            return
        password = bytes(self.line[: m.start()])
        self.line.clear()
        self.checking = True
        from twisted.internet.threads import deferToThreadPool

        d = deferToThreadPool(self.gate.reactor, self.gate.reactor.getThreadPool(),
                              self.gate.check, password)  # fmt: skip
        d.addCallback(self._checked)

    def _checked(self, name: str | None) -> None:
        self.checking = False
        if not self.connected:
            return
        if name is None:
            n = self.gate.limiter.failed(self.host)
            sys.stderr.write(f"xenconsole: login failed from {self.host} ({n} in a row)\n")
            self.transport.write(b"\r\nLogin incorrect\r\n")
            self.transport.loseConnection()
            return
        self.gate.limiter.succeeded(self.host)
        sys.stderr.write(f"xenconsole: login as {name} from {self.host}\n")
        self.transport.write(b"\r\n")
        self.open()


class PasswordGateFactory(protocol.ServerFactory):
    def __init__(self, wrapped: protocol.Factory, hashes: list[Hash], limiter, reactor) -> None:
        self.wrapped = wrapped
        self.hashes = hashes
        self.limiter = limiter
        self.reactor = reactor

    def check(self, password: bytes) -> str | None:
        """The name of the hash `password` matches, or None (runs in a worker thread)."""
        for h in self.hashes:
            if h.check(password):
                return h.name
        return None

    def buildProtocol(self, addr) -> PasswordGate:
        return PasswordGate(self, addr)


class AuthReactor:
    """The reactor as a transport sees it: listenTCP listens with TLS or a password gate."""

    def __init__(self, reactor, cfg: AccessConfig, limiter: RateLimiter) -> None:
        self._reactor = reactor
        self._cfg = cfg
        self._limiter = limiter

    def listenTCP(self, port: int, factory, backlog: int = 50, interface: str = ""):
        if self._cfg.tls:
            ctx = tls_context(self._cfg)
            return self._reactor.listenSSL(port, TLSGateFactory(factory), ctx, backlog, interface)
        gate = PasswordGateFactory(factory, self._cfg.hashes, self._limiter, self._reactor)
        return self._reactor.listenTCP(port, gate, backlog, interface)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
