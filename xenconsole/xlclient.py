"""`xenconsole xl [--control PATH] ARGS...`: run `xl ARGS` in the emulated dom0 from the host.

Its stdout, stderr and exit status are those of `xl ARGS` typed in dom0. `xl create FILE`
first uploads FILE and the files it names (kernel=, ramdisk=, workload="asm:PATH", also as
KEY=VALUE arguments) from the caller's filesystem, read with the caller's permissions, to the
same path in dom0's filesystem (a relative path lands relative to dom0's /root, where the
command runs), so the command and its messages are the ones the user typed; a file the
caller cannot read is not uploaded (dom0's own file of that name is used, or dom0's xl says
it is missing), nor is one the server refuses (outside dom0's /). `xl console`
streams until the domain goes away; keys go to the console, Ctrl-] ends it.

Standard library only, so the `xl` shim (xenconsole/shim/xl, its directory printed by
`xenconsole shim-dir`) starts fast under any python3. The server: `--control PATH`, else
$XENCONSOLE_CONTROL, else the one server whose socket is in the runtime directory.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import socket
import sys

CHUNK = 1 << 20  # bytes of a file per upload request
PENDING_WAIT_S = 3.0  # how long `xl unpause` waits for consoles started before it
CTRL_RBRACKET = 0x1D
GLOBAL_OPTS = "vftTN"
_REFS = re.compile(r"""^\s*(kernel|ramdisk|workload)\s*=\s*(?:"([^"]*)"|'([^']*)'|(\S+))""")


class ClientError(Exception):
    """One line after `xenconsole: error: `; exit status 2."""


def runtime_dir() -> str:
    """Where servers put their control sockets: $XDG_RUNTIME_DIR/xenconsole, else
    /tmp/xenconsole-UID (xenconsole/control.py makes and checks it)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "xenconsole") if base else f"/tmp/xenconsole-{os.getuid()}"


def pending_dir() -> str:
    return os.path.join(runtime_dir(), "pending")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def console_pending(make: bool) -> str | None:
    """This process's "console on its way" marker (made by the shim before Python starts,
    or here); its path, or None when it cannot be made."""
    path = os.path.join(pending_dir(), f"console.{os.getpid()}")
    if make and not os.path.exists(path):
        try:
            os.makedirs(pending_dir(), mode=0o700, exist_ok=True)
            open(path, "w").close()
        except OSError:
            return None
    return path


def wait_for_consoles(limit: float = PENDING_WAIT_S) -> None:
    """Before `xl unpause`: let consoles started earlier attach first. xtf-runner starts
    `xl console` and then at once `xl unpause`; the C xl attaches in a few milliseconds,
    this Python client needs tens, so without the wait a short guest can end before its
    console is there. Markers of processes that are gone are removed."""
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        waiting = False
        for p in glob.glob(os.path.join(pending_dir(), "console.*")):
            pid = p.rsplit(".", 1)[1]
            if pid.isdigit() and _pid_alive(int(pid)):
                waiting = True
            else:
                try:
                    os.unlink(p)
                except OSError:
                    pass
        if not waiting:
            return
        time.sleep(0.01)


def shim_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim")


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def connect(explicit: str | None = None) -> socket.socket:
    """A connection to the chosen server's control socket; ClientError."""
    path = explicit or os.environ.get("XENCONSOLE_CONTROL")
    if path:
        try:
            return _connect(path)
        except OSError as e:
            raise ClientError(f"cannot connect to {path}: {e.strerror}") from None
    where = runtime_dir()
    live = []
    for p in sorted(glob.glob(os.path.join(where, "control-*.sock"))):
        try:
            live.append((p, _connect(p)))
        except OSError:
            continue
    if len(live) == 1:
        return live[0][1]
    for _p, s in live:
        s.close()
    if not live:
        raise ClientError(
            f"no xenconsole server's control socket in {where} "
            "(start `xenconsole serve`, or set XENCONSOLE_CONTROL)"
        )
    names = ", ".join(p for p, _ in live)
    raise ClientError(f"several servers are running; set XENCONSOLE_CONTROL to one of: {names}")


class Channel:
    """JSON lines over the control socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, msg: dict) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self) -> dict | None:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


def _command(args: list[str]) -> tuple[str | None, list[str]]:
    """xl's subcommand and its arguments, after xl's global options."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        if args[i] == "--":
            i += 1
            break
        i += 1
    return (args[i], args[i + 1 :]) if i < len(args) else (None, [])


def create_files(argv: list[str]) -> tuple[str | None, list[str]]:
    """`xl create`'s config file and the files it references (config text and KEY=VALUE)."""
    config = None
    refs_text: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-f", "--defconfig") and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
            continue
        if a.startswith("--defconfig="):
            config = a.split("=", 1)[1]
        elif "=" in a and not a.startswith("-"):
            refs_text.append(a)
        elif not a.startswith("-") and config is None:
            config = a
        i += 1
    return config, refs_text


def referenced(text: str) -> list[str]:
    """Paths named by kernel=, ramdisk= and workload="asm:PATH" statements."""
    from xenconsole.dom0.lex import split_unquoted

    out = []
    for line in text.splitlines():
        for stmt in split_unquoted(line, ";", comment="#")[0]:
            out += _reference(stmt)
    return out


def _reference(stmt: str) -> list[str]:
    m = _REFS.match(stmt)
    if not m:
        return []
    key, value = m.group(1), next(g for g in m.groups()[1:] if g is not None)
    if key == "workload":
        if not value.startswith("asm:"):
            return []
        value = value[4:]
    return [value] if value else []


def upload(ch: Channel, path: str, data: bytes, mode: int) -> str | None:
    """Put `data` at dom0's `path`; None, or the server's error line."""
    offset = 0
    while True:
        chunk = data[offset : offset + CHUNK]
        ch.send({"op": "upload", "path": path, "offset": offset, "mode": mode,
                 "data": base64.b64encode(chunk).decode()})  # fmt: skip
        reply = ch.recv()
        if reply is None:
            return "the server closed the connection"
        if "error" in reply:
            return reply["error"]
        offset += len(chunk)
        if offset >= len(data):
            return None


def _read_local(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as f:  # the caller's own permissions
        st = os.fstat(f.fileno())
        return f.read(), st.st_mode & 0o755


def upload_create(ch: Channel, argv: list[str]) -> None:
    """Upload `xl create`'s files that the caller can read; the rest is dom0's business."""
    config, extra = create_files(argv)
    texts = list(extra)
    if config is not None and config != "/dev/null":
        try:
            data, mode = _read_local(config)
        except OSError:
            data = None  # not the caller's: dom0's own file, or dom0's xl says it is missing
        if data is not None:
            upload(ch, config, data, mode)  # refused (outside dom0's /): dom0's xl says so
            texts.append(data.decode("utf-8", "replace"))
    for path in referenced("\n".join(texts)):
        try:
            data, mode = _read_local(path)
        except OSError:
            continue  # dom0's xl reports the missing file in its own words, as it does
            # for a path the server refuses to write (one that leaves dom0's /)
        upload(ch, path, data, mode)
    return None


def _write(stream, text: str) -> None:
    stream.buffer.write(text.encode("utf-8", "replace"))
    stream.flush()


def run(ch: Channel, args: list[str]) -> int:
    """Send `xl ARGS`, copy its output, return its exit status."""
    cmd, rest = _command(args)
    if cmd is not None and "create".startswith(cmd) and len(cmd) >= 2:
        upload_create(ch, rest)
    console = cmd is not None and len(cmd) >= 3 and "console".startswith(cmd)
    if cmd == "unpause":
        wait_for_consoles()
    ch.send({"op": "xl", "args": args})
    if console:
        _attached()
    keys = _KeyForwarder(ch) if console else None
    try:
        while True:
            msg = ch.recv()
            if msg is None:
                sys.stderr.write("xenconsole: error: the server closed the connection\n")
                return 1
            if "out" in msg:
                _write(sys.stdout, msg["out"])
            elif "err" in msg:
                _write(sys.stderr, msg["err"])
            elif "exit" in msg:
                return int(msg["exit"])
            elif "error" in msg:
                sys.stderr.write(f"xenconsole: error: {msg['error']}\n")
                return 2
    finally:
        if keys is not None:
            keys.stop()


def _attached() -> None:
    """The console request is sent (the server reads a connection's requests in order, and
    this one before any later connection's): no longer pending."""
    path = console_pending(make=False)
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


class _KeyForwarder:
    """While `xl console` runs with a terminal on stdin: raw keys to the console (Ctrl-]
    ends it on the server's side, as xl's console client does)."""

    def __init__(self, ch: Channel) -> None:
        import threading

        self.ch = ch
        self.saved = None
        self.fd = sys.stdin.fileno() if sys.stdin is not None else -1
        if self.fd < 0 or not os.isatty(self.fd):
            return
        import termios
        import tty

        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1024)
            except OSError:
                return
            if not data:
                return
            try:
                self.ch.send({"op": "input", "data": data.decode("latin-1")})
            except OSError:
                return

    def stop(self) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None


def _open(control: str | None) -> Channel | None:
    """The control connection, or None after one error line on stderr."""
    try:
        return Channel(connect(control))
    except ClientError as e:
        sys.stderr.write(f"xenconsole: error: {e}\n")
        return None


def main(args: list[str], control: str | None = None) -> int:
    cmd, _ = _command(args)
    if cmd is not None and len(cmd) >= 3 and "console".startswith(cmd):
        console_pending(make=True)  # the shim made it already when it ran `xl console`
    ch = _open(control)
    if ch is None:
        return 2
    try:
        return run(ch, args)
    except OSError as e:
        sys.stderr.write(f"xenconsole: error: control connection: {e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        ch.close()


def shim_main(argv: list[str] | None = None) -> int:
    """The `xl` shim: `xl ARGS` exactly as given."""
    return main(sys.argv[1:] if argv is None else argv)


def who_main(control: str | None) -> int:
    """`xenconsole who [--control PATH]`: who is attached to the server's serial line, one
    line each as telnet's AYT answer gives them (`[who] NAME rw|ro since HH:MM:SS[ writer]`);
    nothing when no one is."""
    import time

    ch = _open(control)
    if ch is None:
        return 2
    try:
        ch.send({"op": "who"})
        reply = ch.recv()
    except OSError as e:
        sys.stderr.write(f"xenconsole: error: control connection: {e.strerror}\n")
        return 2
    finally:
        ch.close()
    if reply is None or "who" not in reply:
        why = (reply or {}).get("error", "the server closed the connection")
        sys.stderr.write(f"xenconsole: error: {why}\n")
        return 2
    for a in reply["who"]:
        since = time.strftime("%H:%M:%S", time.localtime(a["since"]))
        print(f"[who] {a['name']} {a['mode']} since {since}" + (" writer" if a["writer"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(shim_main())
