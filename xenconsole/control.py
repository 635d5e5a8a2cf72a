"""The control channel: a UNIX socket beside the serial line that runs `xl` in dom0 for a
program on the host (xenconsole/xlclient.py is its client; docs/contract.md the protocol).

JSON lines both ways, one object per line, any number of requests per connection, one at a
time:
    {"op": "xl", "args": ["list"]}           -> {"out": TEXT}... {"err": TEXT}... {"exit": N}
    {"op": "input", "data": TEXT}            while `xl console` runs: keys for it (Ctrl-] ends)
    {"op": "upload", "path": P, "data": BASE64, "offset": N, "mode": M}
                                             -> {"ok": DOM0-PATH} or {"error": LINE}
    {"op": "access", "buckets": B, "reset": true}
                                             -> {"access": SAMPLE} or {"error": LINE}
                 key `U` for every guest as numbers, then `Z` (keyhandlers/access.py
                 `sample`), for `xenconsole record`; nothing is printed on the console
    {"op": "who"}                            -> {"who": [{"name": "tcp:127.0.0.1:5555",
                                                 "mode": "rw"|"ro", "since": UNIX-TIME,
                                                 "writer": BOOL}, ...]}
                                                (who is attached to the serial line)
    anything else                            -> {"error": LINE}
Each connection has its own dom0 shell (own working directory, exit status, foreground), on
the same machine and dom0 filesystem as the serial line's: output goes to the caller only,
the command line is never typed on the serial line, and what the hypervisor prints because
of the command (Xen's lines, the ring) goes where it always goes.

The socket is bound inside a fresh 0700 directory, made 0600, and only then linked to its
path, so no other user can ever connect; a peer whose SO_PEERCRED uid is not ours is also
refused. The default path is in the server's runtime directory (`runtime_dir()`).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import shutil
import socket
import stat
import struct
import tempfile

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from xenconsole.dom0.fs import HOME, Dom0Fs, FsError
from xenconsole.dom0.shell import Dom0Shell, Pending, reactor_runner
from xenconsole.hub import Listener
from xenconsole.options import UsageError

MAX_LINE = 4 << 20  # one request line: an upload chunk of 1 MiB in base64 fits
READY_POLL_S = 0.05  # how often a request waits for dom0's shell to come up


def runtime_dir() -> str:
    """$XDG_RUNTIME_DIR/xenconsole, else /tmp/xenconsole-UID: made 0700, and refused when
    another user owns it or can write it."""
    from xenconsole.xlclient import runtime_dir as where

    path = where()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UsageError(f"runtime directory {path} is not a private directory of this user")
    return path


def default_control_path() -> str:
    return os.path.join(runtime_dir(), f"control-{os.getpid()}.sock")


def _in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _check_free(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"--control: {path} exists and is not a socket")
    if _in_use(path):
        raise UsageError(f"--control: {path} is in use by another server")
    os.unlink(path)  # left by a server that did not stop cleanly


class ControlShell(Dom0Shell):
    """A dom0 shell whose stdout and stderr are a control connection's messages."""

    def __init__(self, machine, fs: Dom0Fs, send) -> None:
        super().__init__(machine, lambda data: None, fs)
        self.send = send
        self.ready = True
        self._foreground_done: defer.Deferred | None = None

    def write(self, text: str) -> None:
        self.send({"out": text})

    def _write(self, data: bytes) -> None:  # raw bytes (`clear`): stdout too
        self.send({"out": data.decode("utf-8", "replace")})

    def ewrite(self, text: str) -> None:
        self.send({"err": text})

    def prompt(self) -> None:
        # No prompt on a control connection; a foreground command (`xl console`) ending
        # brings the prompt back on a tty: here it ends the request.
        done, self._foreground_done = self._foreground_done, None
        if done is not None:
            done.callback(self.status)

    def run_xl(self, args: list[str]) -> defer.Deferred:
        """`xl ARGS` to its end (a Pending part on a worker thread, a foreground command
        until it returns); fires with the exit status."""
        try:
            result = self.xl.main(self, args)
        except Exception as e:  # never a traceback to the caller
            self.eprintln(f"-bash: xl: internal error: {type(e).__name__}: {e}")
            result = 1
        if isinstance(result, Pending):
            runner = self.runner or reactor_runner()
            if runner is None:
                d = defer.succeed(self._run_inline(result))
            else:
                pending = result
                d = runner(pending.work)
                d.addBoth(lambda v: self._finish(pending, getattr(v, "value", v)))
        else:
            d = defer.succeed(result)
        return d.addCallback(self._after)

    def _after(self, status: int) -> defer.Deferred | int:
        self.status = status
        if self.foreground is None:
            return status
        self._foreground_done = defer.Deferred()
        return self._foreground_done

    def abandon(self) -> None:
        """The caller went away: a foreground `xl console` detaches."""
        self.send = lambda msg: None
        fg = self.foreground
        if fg is not None:
            self._foreground_done = None
            close = getattr(getattr(fg, "__self__", None), "close", None)
            if close is not None:
                close()
            self.foreground = None


def peer_uid(sock) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", raw)[1]


class ControlProtocol(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.shell: ControlShell | None = None
        self.busy = False
        self.queue: list[dict] = []

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport.getHandle())
        if uid != os.getuid():
            self.send({"error": "control: permission denied"})
            self.transport.loseConnection()

    def send(self, msg: dict) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.write(json.dumps(msg, ensure_ascii=False).encode() + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self.send({"error": f"control: request longer than {MAX_LINE} bytes"})
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError
        except ValueError:
            self.send({"error": "control: a request is one JSON object per line"})
            return
        if req.get("op") == "input":
            self._input(req)
        elif self.busy:
            self.queue.append(req)
        else:
            self._start(req)

    def _input(self, req: dict) -> None:
        data = req.get("data")
        sh = self.shell
        if isinstance(data, str) and sh is not None and sh.foreground is not None:
            sh.foreground(data.encode("latin-1", "replace"))

    def _start(self, req: dict) -> None:
        op = req.get("op")
        if op == "upload":
            self.send(self.server.upload(req))
            return
        if op == "who":
            self.send({"who": [a._asdict() for a in self.server.runner.hub.who()]})
            return
        if op == "access":
            self._access(req)
            return
        if op != "xl":
            self.send({"error": f"control: unknown op {op!r} (xl, input, upload, access, who)"})
            return
        args = req.get("args")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            self.send({"error": "control: xl needs args, a list of strings"})
            return
        self.busy = True
        d = self.server.when_ready()
        d.addCallback(lambda machine: self._run(machine, args))
        d.addBoth(self._done)

    def _access(self, req: dict) -> None:
        """One sample of keys `U`/`Z` off the reactor's thread (the scan holds the guests)."""
        buckets, reset = req.get("buckets", 256), req.get("reset", True)
        if not isinstance(buckets, int) or not isinstance(reset, bool):
            self.send({"error": "control: access: buckets is an integer, reset a boolean"})
            return
        from twisted.internet import threads

        from keyhandlers import KeyhandlerError
        from keyhandlers.access import sample

        def run(machine) -> defer.Deferred:
            return threads.deferToThreadPool(
                self.server.reactor, self.server.reactor.getThreadPool(),
                sample, machine, buckets, reset,
            )  # fmt: skip

        def done(result) -> None:
            if isinstance(result, dict):
                self.send({"access": result})
            elif result.check(KeyhandlerError):
                self.send({"error": f"control: access: {result.getErrorMessage()}"})
            else:
                self.send({"error": f"control: access: internal error: {result.getErrorMessage()}"})
            self.busy = False
            while self.queue and not self.busy:
                self._start(self.queue.pop(0))

        self.busy = True
        d = self.server.when_ready()
        d.addCallback(run)
        d.addBoth(done)

    def _run(self, machine, args: list[str]) -> defer.Deferred:
        if self.shell is None or self.shell.machine is not machine:  # new after `R`
            self.shell = ControlShell(machine, self.server.fs, self.send)
        return self.shell.run_xl(args)

    def _done(self, status) -> None:
        if not isinstance(status, int):  # a Failure: say so, never a traceback
            self.send({"err": f"xl: internal error: {status.getErrorMessage()}\n"})
            status = 1
        self.send({"exit": status})
        self.busy = False
        while self.queue and not self.busy:
            self._start(self.queue.pop(0))

    def connectionLost(self, reason=None) -> None:
        if self.shell is not None:
            self.shell.abandon()


class ControlServer(Factory):
    """The control socket's factory: dom0's filesystem and the HostRunner's current machine."""

    def __init__(self, reactor, runner, fs: Dom0Fs) -> None:
        self.reactor = reactor
        self.runner = runner
        self.fs = fs

    def buildProtocol(self, addr) -> ControlProtocol:
        p = ControlProtocol(self)
        p.factory = self
        return p

    def when_ready(self) -> defer.Deferred:
        """Fires with the machine once dom0's shell is up (powering the host on if it waits
        for its first client, as an attach on the serial line does)."""
        hub = self.runner.hub
        if hub.on_first_attach is not None:
            cb, hub.on_first_attach = hub.on_first_attach, None
            cb()
        d: defer.Deferred = defer.Deferred()

        def poll() -> None:
            shell = self.runner.shell
            if self.runner.machine is not None and shell is not None and shell.ready:
                d.callback(self.runner.machine)
            else:
                self.reactor.callLater(READY_POLL_S, poll)

        poll()
        return d

    def upload(self, req: dict) -> dict:
        path, data = req.get("path"), req.get("data", "")
        offset, mode = req.get("offset", 0), req.get("mode", 0o644)
        if not isinstance(path, str) or not isinstance(data, str):
            return {"error": "control: upload needs path and data (base64)"}
        if not isinstance(offset, int) or offset < 0 or not isinstance(mode, int):
            return {"error": "control: upload: offset and mode are non-negative integers"}
        try:
            blob = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return {"error": "control: upload: data is not base64"}
        try:
            return {"ok": self.fs.write(path, blob, offset, mode, cwd=HOME)}
        except FsError as e:
            return {"error": f"upload: {path}: {e.strerror}"}


def listen(reactor, runner, fs: Dom0Fs, path: str) -> Listener:
    """Serve the control channel at `path`; the Listener's close removes the socket.

    Twisted binds, then chmods: so the socket is bound (mode 0600) inside a fresh 0700
    directory beside `path`, and only then given its public name by a hard link, which
    has the same inode and so the same mode from its first moment."""
    path = os.path.abspath(path)
    _check_free(path)
    try:
        tmp = tempfile.mkdtemp(prefix=".xenconsole-", dir=os.path.dirname(path))
    except OSError as e:
        raise UsageError(f"--control: {os.path.dirname(path)}: {e.strerror}") from None
    try:
        port = reactor.listenUNIX(os.path.join(tmp, "s"), ControlServer(reactor, runner, fs),
                                  backlog=64, mode=0o600)  # fmt: skip
        try:
            os.link(os.path.join(tmp, "s"), path)
        except OSError as e:
            port.stopListening()
            raise UsageError(f"--control: {path}: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ino = os.stat(path).st_ino

    def close() -> None:
        port.stopListening()
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if os.stat(path).st_ino == ino:  # still ours
                os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    return Listener(path, close)
