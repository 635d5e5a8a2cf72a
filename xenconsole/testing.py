"""Start `xenconsole serve` as a subprocess on free ports, for your own console tests.

    from xenconsole.testing import serve
    with serve("--memory", "2G") as host:
        con = Console.open(host.urls["telnet"])

or, under pytest, the `xenconsole_host` fixture (registered by this module as a plugin:
add `pytest_plugins = ["xenconsole.testing"]` to your conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from xenconsole.transports import TRANSPORTS, by_kind

READY_TIMEOUT = 30.0
DEFAULT_KINDS = ("telnet", "tcp")  # what `serve()` listens on unless told otherwise


class ServeError(RuntimeError):
    pass


@dataclass
class ServedHost:
    """A running `xenconsole serve`: its process, ready lines and URLs by transport kind
    (`telnet`, `tcp`, `rfc2217`, `pty`, ...), ready for `xenconsole.expect.Console.open`."""

    proc: subprocess.Popen
    urls: dict[str, str] = field(default_factory=dict)
    ready_lines: list[str] = field(default_factory=list)
    control: str | None = None  # the control socket (`xenconsole: control PATH`)
    _stderr: bytearray = field(default_factory=bytearray)
    _reader: threading.Thread | None = None

    @property
    def pty(self) -> str | None:
        return self.urls.get("pty")

    def wait_booted(self, timeout: float = 60) -> None:
        """Return once dom0's shell answers: the boot is over (attaching powers the host on
        if it waits for a client)."""
        kind = "tcp" if "tcp" in self.urls else next(iter(self.urls))
        with self.console(kind, timeout=timeout) as con:
            con.run("true")

    def console(self, kind: str = "telnet", **kw):
        """`Console.open()` on one of the listeners (by transport kind)."""
        from xenconsole.expect import Console

        return Console.open(self.urls[kind], **kw)

    def address(self, kind: str) -> tuple[str, int]:
        """(host, port) of the telnet, tcp or rfc2217 listener."""
        url = self.urls[kind]
        hostport = url.split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        return host, int(port)

    def xl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`xenconsole xl ARGS` against this server: stdout, stderr (text) and returncode."""
        return subprocess.run(
            [sys.executable, "-m", "xenconsole", "xl", "--control", self.control, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (warnings; never meant for clients)."""
        if self.proc.poll() is not None and self._reader is not None:
            self._reader.join(5)  # it ends at the pipe's end of file
        return self._stderr.decode(errors="replace")


@contextlib.contextmanager
def serve(
    *args: str,
    wait: bool = False,
    env: dict[str, str] | None = None,
    replay: bool = False,
    timeout: float = READY_TIMEOUT,
    **kinds: bool,
) -> Iterator[ServedHost]:
    """Run `xenconsole serve` on 127.0.0.1 with port 0 listeners; always clean up.

    Keywords name transports to switch on or off (`pty=True`, `telnet=False`); telnet and
    tcp are on unless switched off, the others off unless switched on. `replay=False` (the
    default here) gives `--replay-bytes 0`, so a test's transcript starts at its own attach;
    `replay=True` keeps the server's default (a new client first gets the last 64 KiB)."""
    cmd = [sys.executable, "-m", "xenconsole", "serve"]
    unknown = sorted(set(kinds) - {t.kind for t in TRANSPORTS})
    if unknown:
        raise TypeError(f"serve(): no transport named {', '.join(unknown)}")
    for t in TRANSPORTS:
        if kinds.get(t.kind, t.kind in DEFAULT_KINDS):
            cmd += [t.flag] if t.any_free is None else [t.flag, t.any_free]
        elif t.default is not None:
            cmd += [f"--no-{t.kind}"]
    if not wait:
        cmd += ["--no-wait"]
    if not replay and not any(a.startswith("--replay-bytes") for a in args):
        cmd += ["--replay-bytes", "0"]
    cmd += list(args)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    host = ServedHost(proc)
    # Drain stderr all along: a server that writes a lot there must never block on the pipe.
    reader = threading.Thread(target=_drain, args=(proc.stderr, host._stderr), daemon=True)
    reader.start()
    host._reader = reader
    try:
        _read_ready(host, timeout)
        yield host
    finally:
        _stop(proc)
        reader.join(5)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def _drain(pipe, into: bytearray) -> None:
    try:
        for chunk in iter(lambda: os.read(pipe.fileno(), 65536), b""):
            into += chunk
    except (OSError, ValueError):
        pass


def _read_ready(host: ServedHost, timeout: float) -> None:
    proc = host.proc
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServeError(f"xenconsole serve not ready after {timeout}s: {buf!r}")
        if not sel.select(left):
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            proc.wait(5)
            err = host.stderr_text()
            raise ServeError(f"xenconsole serve exited ({proc.returncode}): {err.strip()}")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode().strip()
            host.ready_lines.append(text)
            if text == "xenconsole: ready":
                sel.close()
                return
            parts = text.split(" ", 2)
            if parts[:2] == ["xenconsole:", "control"] and len(parts) == 3:
                host.control = parts[2]
            elif len(parts) == 3 and parts[0] == "xenconsole:":
                # `KIND-ro`: a read-only listener of transport KIND.
                kind = parts[1].removesuffix("-ro")
                host.urls[parts[1]] = by_kind(kind).url(parts[2])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


try:
    import pytest
except ImportError:  # pytest is only needed for the fixture
    pytest = None

if pytest is not None:

    @pytest.fixture
    def xenconsole_host() -> Iterator[ServedHost]:
        """A running host with telnet, tcp and pty listeners, booted before the test starts."""
        with serve(pty=True) as host:
            host.wait_booted()
            yield host
