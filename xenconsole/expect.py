"""Script the console: an expect-style API over telnet, raw TCP, RFC 2217 or a PTY.

    from xenconsole.expect import Console

    with Console.open("telnet://127.0.0.1:4555") as con:
        con.expect_exact("root@dom0:~# ", timeout=60)   # the host has booted
        print(con.debug_key("h"))                        # Ctrl-A x3 is sent for you
        print(con.run("xl list"))                        # ... and back to dom0

`Console` is a `pexpect` spawn (the trick labgrid uses: only the byte transport is
replaced), so `expect`, `expect_exact`, `before`, `after`, `match`, `TIMEOUT` and `EOF`
behave exactly as in pexpect. On top of that it knows the console's modes: it follows the
`*** Serial input to ...` messages to know where input goes, and it can run a debug key or
a dom0 command and hand back just its output.

URLs, as for `xenconsole connect`: `telnet://HOST:PORT` (negotiation handled inside, never
visible), `socket://HOST:PORT` (raw bytes), `rfc2217://HOST:PORT` (pyserial), or a device
path such as `/dev/pts/7` (a PTY or serial port, through pyserial). A bad URL raises
ValueError; a console that cannot be reached raises ConsoleError.
"""

from __future__ import annotations

import re
import secrets
import shlex
import time
from collections.abc import Sequence
from typing import Any

import pexpect
from pexpect.spawnbase import SpawnBase

from emu.banner import XEN_BANNER
from emu.console import CONSOLE_PREFIX, SWITCH_KEYS, SWITCH_PATTERN
from xenconsole import clientlink
from xenconsole.transports import open_link

__all__ = [
    "Console",
    "ConsoleError",
    "CommandError",
    "EOF",
    "TIMEOUT",
    "PROMPT",
    "keys_in",
    "strip_ansi",
]

EOF = pexpect.EOF
TIMEOUT = pexpect.TIMEOUT

PROMPT = "root@dom0:~# "

# A switch message (emu/console.py) says where input goes; a new boot (the banner's first
# line, emu/banner.py: `h` prints the version lines too) gives input back to Xen. A switch
# message may follow a console timestamp (`(XEN) [...] `).
_XEN_LINE = re.escape(CONSOLE_PREFIX) + r"(?:\[[^\]\n]*\] )?"
_BOOT = re.escape(XEN_BANNER.split("\n", 1)[0])
_EVENTS = re.compile(f"(?:{_XEN_LINE}{SWITCH_PATTERN}|({_BOOT}))".encode())
_SWITCH_LINE = re.compile(_XEN_LINE + SWITCH_PATTERN + r"[^\n]*\n")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_GUEST_LINE = re.compile(r"^\(d\d+\) ")
_GUEST_LINES = re.compile(rb"(?m)^\(d\d+\) [^\n]*\n?")


# How long a catch-up read of what has arrived may take: under a flooding guest the line
# is never quiet, and waiting for silence would never end.
DRAIN_LIMIT_S = 1.0

class ConsoleError(RuntimeError):
    """The console did not do what was asked (no switch message, no prompt, ...)."""


class CommandError(ConsoleError):
    """`run(..., check=True)`: the dom0 command exited with a non-zero status."""

    def __init__(self, command: str, status: int, output: str) -> None:
        super().__init__(f"{command!r} exited with status {status}: {output.strip()[:200]}")
        self.command = command
        self.status = status
        self.output = output


def strip_ansi(text: str) -> str:
    """Remove terminal escape sequences and carriage returns."""
    return _ANSI.sub("", text).replace("\r", "")


# ---- byte transport ---------------------------------------------------------------------------


def _open_link(url: str) -> clientlink.PullLink:
    try:
        return clientlink.PullLink(open_link(url))
    except clientlink.LinkUsageError as e:
        raise ValueError(str(e)) from None
    except clientlink.LinkError as e:
        raise ConsoleError(str(e)) from None


# ---- the console ----------------------------------------------------------------------------


class Console(SpawnBase):
    """One attached console client, with the whole pexpect API.

    Attributes beyond pexpect's:

    - `url`: what was opened.
    - `target`: where serial input goes as far as the output shows: `"xen"`, `"dom0"`
      (or `"domN"` with boot-time domUs), or `None` before any switch message was seen.
    - `booting`: a boot was seen starting and has not yet switched input to DOM0.
    - `exit_status`: the status of the last `run()` command.
    - `transcript`: every byte received (telnet commands removed), for failure reports;
      `events` holds `(monotonic time, "recv" | "send", bytes)` for both directions and
      `write_transcript(path)` saves it readably.
    """

    def __init__(
        self,
        link: Any,
        url: str,
        timeout: float = 30,
        maxread: int = 4096,
        logfile: Any = None,
        encoding: str | None = "utf-8",
        codec_errors: str = "replace",
    ) -> None:
        self.url = url
        self.target: str | None = None
        self.booting = False
        super().__init__(
            timeout, maxread, None, logfile, encoding=encoding, codec_errors=codec_errors
        )
        self.link = link
        self.name = f"<Console {url}>"
        self.child_fd = link.fileno()
        self.closed = False
        self.exit_status: int | None = None
        self.transcript = bytearray()
        self.events: list[tuple[float, str, bytes]] = []
        self._scan_tail = b""
        self.linesep = "\r" if encoding is not None else b"\r"

    @classmethod
    def open(
        cls,
        url: str,
        timeout: float = 30,
        *,
        logfile: Any = None,
        encoding: str | None = "utf-8",
        codec_errors: str = "replace",
    ) -> Console:
        """Attach to a console. `timeout` is the default for every wait.

        `encoding=None` gives bytes in `before`/`after` (pexpect's bytes mode); the default
        decodes UTF-8, replacing what does not decode. `logfile` (a file object, as in
        pexpect) receives both directions.
        """
        return cls(
            _open_link(url),
            url,
            timeout=timeout,
            logfile=logfile,
            encoding=encoding,
            codec_errors=codec_errors,
        )

    def __repr__(self) -> str:
        return f"<Console {self.url} target={self.target}>"

    def __str__(self) -> str:
        tail = self.buffer[-300:] if self.buffer else bytes(self.transcript[-300:])
        return f"{self.name} target={self.target}\nlast output: {tail!r}"

    # ---- pexpect transport hooks ------------------------------------------------------------

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> Any:
        """Bytes (or text) that arrived, waiting up to `timeout`; TIMEOUT or EOF otherwise."""
        if self.closed:
            raise ValueError("I/O operation on closed console")
        if timeout == -1:
            timeout = self.timeout
        data = self.link.recv(size, timeout)
        if data is None:
            raise TIMEOUT("Timeout exceeded.")
        if not data:
            self.flag_eof = True
            raise EOF(f"{self.url}: the console closed the connection")
        self._track(data)
        self.transcript += data
        self.events.append((time.monotonic(), "recv", data))
        s = self._decoder.decode(data, final=False)
        self._log(s, "read")
        return s

    def send(self, s: Any) -> int:
        """Send text or bytes as typed (no line ending added); returns the bytes sent."""
        s = self._coerce_send_string(s)
        self._log(s, "send")
        b = self._encoder.encode(s, final=False) if self.encoding is not None else s
        self._send_raw(b)
        return len(b)

    def _send_raw(self, b: bytes) -> None:
        self.events.append((time.monotonic(), "send", b))
        self.link.write(b)

    def sendline(self, s: Any = "") -> int:
        """Send a line ending in CR, which is what Enter sends on a serial line."""
        return self.send(self._coerce_send_string(s) + self.linesep)

    def sendcontrol(self, char: str) -> int:
        """Send Ctrl-<char>, e.g. `sendcontrol("c")`."""
        code = ord(char.lower()) & 0x1F if char != "?" else 0x7F
        self._send_raw(bytes([code]))
        return 1

    def send_break(self) -> None:
        """A serial BREAK (telnet IAC BRK, RFC 2217 or the device's own)."""
        try:
            self.link.send_break()
        except clientlink.LinkError as e:
            raise ConsoleError(str(e)) from None

    def isalive(self) -> bool:
        return not self.closed and not self.flag_eof

    def close(self) -> None:
        """Detach. Calling it twice is harmless."""
        if not self.closed:
            self.closed = True
            self.link.close()
            self.child_fd = -1

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- where input goes -------------------------------------------------------------------

    def _track(self, data: bytes) -> None:
        window = self._scan_tail + data
        last = None
        for m in _EVENTS.finditer(window):
            last = m
        if last is not None:
            name = last.group(1)
            # A (re)boot: Xen owns input until console_endboot() switches it. Replays of the
            # ring (`xl dmesg`, key `w`) always end with a newer switch message, if any.
            self.booting = name is None
            if name is None:
                self.target = "xen"
            else:
                name = name.decode().lower()
                self.target = "xen" if name == "xen" else name
            # Keep what follows the last event so it is not counted twice.
            window = window[last.end() :]
        self._scan_tail = window[-160:]

    def _drain(self, quiet: float = 0.05, limit: float | None = None) -> None:
        """Pull in what has arrived (until `quiet` s of silence, at most `limit` s) without
        consuming it, so `target` is up to date."""
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            wait = quiet
            if deadline is not None:
                wait = min(quiet, deadline - time.monotonic())
                if wait <= 0:
                    return
            try:
                data = self.read_nonblocking(self.maxread, wait)
            except TIMEOUT:
                return
            self._append(data)

    def _settle_boot(self, timeout: float) -> None:
        """Let a boot in progress reach its switch to DOM0 before typing anything.

        Typed during boot, Ctrl-A x3 would be undone by the boot's own switch. A boot seen
        starting is waited out. Attached to a running host with nothing seen yet: if Xen is
        printing (maybe a boot joined midway), wait until a switch message shows or Xen has
        been quiet for 1.5 s; an idle host costs 0.3 s once.
        """
        deadline = time.monotonic() + timeout
        if self.target is None:
            last = time.monotonic()
            xen_talking = False
            while self.target is None and time.monotonic() < deadline:
                n = len(self.transcript)
                self._drain(quiet=0.1, limit=deadline - time.monotonic())
                now = time.monotonic()
                new = bytes(self.transcript[max(0, n - 6) :])
                if _GUEST_LINES.sub(b"", new[6:] if n >= 6 else new).strip():
                    last = now  # guests chattering on does not count as a boot going on
                    xen_talking = xen_talking or b"(XEN) " in new
                elif now - last >= (1.5 if xen_talking else 0.3):
                    break
        while self.booting and time.monotonic() < deadline:
            self._drain(quiet=0.2, limit=deadline - time.monotonic())

    def _append(self, data: Any) -> None:
        # pexpect keeps unmatched data in `_buffer` (search window) and `_before`.
        for buf in (self._buffer, self._before):
            buf.seek(0, 2)
            buf.write(data)

    def _take_unconsumed(self) -> Any:
        """Take out everything not matched yet, so the next expect sees only new output."""
        old = self._before.getvalue()
        self._buffer = self.buffer_type()
        self._before = self.buffer_type()
        return old

    def _switch_to(self, want: str, timeout: float | None) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._drain(limit=DRAIN_LIMIT_S)  # bounded: a flooding guest is never quiet
        # From an unknown state, or with boot-time domUs in the rotation, one switch may land
        # elsewhere first; the rotation has at most a few stops. A reboot (key `R`) may
        # start meanwhile: each round first lets a boot in progress finish.
        for _ in range(4):
            self._settle_boot(max(0.5, deadline - time.monotonic()))
            if self.target == want:
                return
            stale = self._take_unconsumed()
            self._send_raw(SWITCH_KEYS)
            try:
                self.expect(_SWITCH_LINE, timeout=timeout)
            except TIMEOUT:
                raise ConsoleError(
                    f"sent Ctrl-A x3 but saw no 'Serial input to' message within {timeout}s"
                    f" ({self})"
                ) from None
            self.before = stale + self.before
            # The line matched may have been in flight before our Ctrl-As (the boot's own
            # switch, say); ours then follows within milliseconds: catch it before deciding.
            self._drain(quiet=0.2, limit=0.6)
        if self.target != want:
            raise ConsoleError(f"could not switch serial input to {want} (now {self.target})")

    def to_xen(self, timeout: float | None = None) -> None:
        """Hand serial input to the hypervisor.

        Sends Ctrl-A three times only if input is not already with Xen, then waits for
        `(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)`.
        """
        self._switch_to("xen", timeout)

    def to_dom0(self, timeout: float | None = None) -> None:
        """Hand serial input to dom0 (Ctrl-A x3 if needed, then wait for the DOM0 message)."""
        self._switch_to("dom0", timeout)

    # ---- higher level -----------------------------------------------------------------------

    def _text(self, x: Any) -> str:
        if isinstance(x, bytes):
            return x.decode("utf-8", "replace")
        return x if isinstance(x, str) else ""

    def settle(self, quiet: float = 0.3, timeout: float | None = None, first: float = 0) -> str:
        """Read until the line has been silent for `quiet` seconds; return and consume it.

        Waits at most `timeout` in all. `first` allows a longer wait for the first byte.
        The text comes back as received (unconsumed earlier output included).
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        wait = max(quiet, first)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                data = self.read_nonblocking(self.maxread, min(wait, left))
            except TIMEOUT:
                break
            self._append(data)
            wait = quiet
        out = self._take_unconsumed()
        self.before, self.after, self.match = out, None, None
        return self._text(out)

    def debug_key(
        self, key: str, *args: str, timeout: float | None = None, quiet: float = 0.3
    ) -> str:
        """Press debug key `key` on the serial line and return that handler's output.

        Switches input to Xen first if needed (input stays with Xen afterwards). If the key
        takes arguments, Xen prompts `(XEN) k args> `; the prompt is answered with `args`
        quoted as a shell would (no args: an empty line, i.e. the defaults). Output is collected
        until the line is quiet for `quiet` seconds and returned as lines ending in `\\n`,
        `(XEN) ` prefixes kept, without `\\r`, terminal escapes, the prompt line, or guest
        `(dN)` lines that happened to arrive meanwhile. An unknown key prints nothing, so
        the result is `""` (after a 2 s wait). Raises ConsoleError if `args` were given
        but the key did not ask for any.
        """
        if len(key) != 1:
            raise ValueError("a debug key is one character")
        self.to_xen(timeout)
        self._drain(limit=DRAIN_LIMIT_S)  # bounded: a flooding guest is never quiet
        self._take_unconsumed()
        self.send(key)
        out = strip_ansi(self.settle(quiet, timeout, first=2.0))
        prompt = f"(XEN) {key} args> "
        if out.endswith(prompt) or out.rstrip(" ").endswith(prompt.rstrip(" ")):
            head = out[: out.rfind(prompt)]
            self.sendline(shlex.join(args))
            rest = strip_ansi(self.settle(quiet, timeout, first=2.0))
            _, _, rest = rest.partition("\n")  # the echoed argument line
            out = head + rest
        elif args:
            raise ConsoleError(f"key {key!r} did not prompt for arguments; output: {out!r}")
        lines = [ln for ln in out.split("\n") if ln and not _GUEST_LINE.match(ln)]
        return "".join(ln + "\n" for ln in lines)

    def run(self, command: str, timeout: float | None = None, check: bool = False) -> str:
        """Run `command` in the dom0 shell and return its output.

        Switches input to dom0 first if needed. The command line is sent followed by
        `; echo MARK $?` (the marker split in quotes so its echo cannot match); the output
        is what lies between the echoed command line and the marker, without `\\r` and
        terminal escapes; anything else printed meanwhile on the serial line (Xen messages,
        e.g. from `xl debug-keys`) is part of it. The exit status is kept in
        `exit_status`; with `check=True` a non-zero status raises CommandError. For
        interactive commands (`xl console`) use `sendline` and `expect` instead.
        """
        if "\n" in command or "\r" in command:
            raise ValueError("run() takes one command line")
        timeout = self.timeout if timeout is None else timeout
        self.to_dom0(timeout)
        self._drain(limit=DRAIN_LIMIT_S)  # bounded: a flooding guest is never quiet
        stale = self._take_unconsumed()
        a, b = secrets.token_hex(4), secrets.token_hex(4)
        tail = f"echo '{a}''{b}' $?"
        self._send_raw(b"\x15")  # Ctrl-U: drop anything half typed
        self.sendline(f"{command}; {tail}")
        try:
            self.expect_exact(tail, timeout=timeout)  # the echo of our own line
            self.expect(re.compile(rf"{a}{b} (\d+)\r?\n"), timeout=timeout)
            output, status = self._text(self.before), int(self._text(self.match.group(1)))
            self.expect_exact(PROMPT, timeout=timeout)
        except TIMEOUT:
            raise ConsoleError(f"{command!r}: no prompt within {timeout}s ({self})") from None
        output = strip_ansi(output)
        if output.startswith("\n"):
            output = output[1:]
        self.exit_status = status
        self.before = stale
        if check and status != 0:
            raise CommandError(command, status, output)
        return output

    def write_transcript(self, path: str) -> None:
        """Save `events` as text: one `+seconds <dir> repr(bytes)` line per chunk."""
        t0 = self.events[0][0] if self.events else 0.0
        with open(path, "w") as f:
            for t, direction, data in self.events:
                f.write(f"+{t - t0:9.3f} {direction} {data!r}\n")


def keys_in(text: str) -> Sequence[str]:
    """The keys listed by `h` output (`(XEN)  key 'k' (ascii 'xx') => ...` lines)."""
    return re.findall(r"^\(XEN\)  key '(.)' \(ascii '[0-9a-f]{2}'\) => ", text, re.M)
