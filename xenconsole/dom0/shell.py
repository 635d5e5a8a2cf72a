"""The dom0 shell: prompt, line editing, a few builtins, and `xl`.

Input arrives from the hypervisor console when it is switched to DOM0; output is dom0's own
(no `(XEN) ` prefix, not in the console ring), with `\\n` sent as `\\r\\n` as a tty does.

A command that must wait for slow work (`xl create` assembling an `asm:` program) returns a
`Pending`: on a running Twisted reactor's thread the work goes to a worker thread and the
prompt comes back when it is done, so the console and every other client keep going
meanwhile; keys typed in between are held (Ctrl-C gives up the wait, as in bash). Without a
reactor (tests driving the shell directly) the work runs inline.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from xenconsole.dom0 import files
from xenconsole.dom0.fs import HOME, Dom0Fs
from xenconsole.dom0.lex import split_unquoted
from xenconsole.dom0.xenstore_cmds import COMMANDS as XENSTORE_COMMANDS

PROMPT = "root@dom0:~# "  # the prompt in dom0's home directory, /root
MAX_LINE = 4095
SERIAL_RX_SIZE = 128  # Xen's serial_rx_ring: what dom0 has not read yet; more is dropped


class ShellExit(Exception):
    pass


@dataclass
class Pending:
    """A command's slow part: `work()` runs off the console's thread, then `finish(result)`
    on it returns the exit status; `result` is what work returned or the exception it raised."""

    work: Callable[[], object]
    finish: Callable[[object], int]


Runner = Callable[[Callable[[], object]], object]  # fn -> a Deferred firing with fn()


def reactor_runner() -> Runner | None:
    """Twisted's deferToThread when called on a running reactor's own thread, else None."""
    reactor = sys.modules.get("twisted.internet.reactor")  # never install one here
    if reactor is None or not getattr(reactor, "running", False):
        return None
    from twisted.internet.threads import deferToThread
    from twisted.python import threadable

    return deferToThread if threadable.isInIOThread() else None


class Dom0Shell:
    def __init__(self, machine, write: Callable[[bytes], None], fs: Dom0Fs | None = None) -> None:
        self.machine = machine
        self._write = write
        # dom0's filesystem (xenconsole/dom0/fs.py); without one, a fresh private root.
        self.fs = fs if fs is not None else _private_fs()
        self.cwd = HOME
        self.line = bytearray()
        self.status = 0
        self.ready = False
        self._after_cr = False
        self._esc = 0  # 0 none, 1 saw ESC, 2 inside CSI
        # Typed before dom0 is up, one chunk per arrival (so a CR of one chunk never folds an
        # LF of the next): read once the shell starts.
        self._early: list[bytes] = []
        self.foreground: Callable[[bytes], None] | None = None  # e.g. `xl console`
        # The rest of the line after a foreground command (True when the line is done).
        self._after_foreground: Callable[[], bool] | None = None
        self._bell = False  # rung for the current over-long line (once, as readline does)
        self.runner: Runner | None = None  # None: reactor_runner() at the time of the call
        self.waiting: object | None = None  # token of the Pending being waited for
        self._abandon: Callable[[], None] | None = None  # drops the rest of a waiting line
        self._typeahead: list[bytes] = []  # typed while a command waits, chunk by chunk
        from xenconsole.dom0 import xl

        self.xl = xl

    # ---- output -------------------------------------------------------------------------

    def write(self, text: str) -> None:
        self._write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace"))

    def println(self, text: str = "") -> None:
        self.write(text + "\n")

    def ewrite(self, text: str) -> None:
        """What a command writes to its stderr: the same tty on the serial line."""
        self.write(text)

    def eprintln(self, text: str = "") -> None:
        self.ewrite(text + "\n")

    def prompt(self) -> None:
        first = not self.ready
        self.ready = True
        self.write(prompt_for(self.cwd))
        if first and self._early:
            early, self._early = self._early, []
            for chunk in early:
                self.rx(chunk)

    # ---- input --------------------------------------------------------------------------

    def rx(self, data: bytes) -> None:
        """One chunk of input as it arrived from one client. CR LF is one Enter only within
        a chunk: a CR at the end of one chunk never swallows an LF at the start of the next
        (the next may come from another client, or minutes later)."""
        if not self.ready:
            # dom0 is not running yet: Xen holds the bytes in its 128-byte ring.
            room = SERIAL_RX_SIZE - sum(len(c) for c in self._early)
            if room > 0 and data:
                self._early.append(bytes(data[:room]))
            return
        try:
            for i, c in enumerate(data):
                if self.waiting is not None:  # a command (e.g. Enter just now) waits
                    self._rx_waiting(data[i:])
                    return
                if self.foreground is not None:
                    self.foreground(bytes([c]))
                    continue
                self._byte(c)
        finally:
            self._after_cr = False

    def _rx_waiting(self, data: bytes) -> None:
        """Bytes typed while a command waits: held (as a tty holds them), Ctrl-C gives up."""
        cut = data.find(b"\x03")
        if cut < 0:
            room = MAX_LINE - sum(len(c) for c in self._typeahead)
            if room > 0 and data:
                self._typeahead.append(bytes(data[:room]))
            return
        self.waiting = None  # the work finishes in its thread; its result is dropped
        abandon, self._abandon = self._abandon, None
        if abandon is not None:  # SIGINT ends the whole line, as in bash
            abandon()
        self._typeahead.clear()  # a tty flushes its input on SIGINT
        self.write("^C\n")
        self.status = 130
        self.prompt()
        self.rx(data[cut + 1 :])  # after the ^C: typed at the new prompt

    def _byte(self, c: int) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if self._esc:
            # Swallow escape sequences (arrow keys and the like): ESC [ ... final byte, and
            # ESC + key (meta). A control character ends the sequence and acts as itself, so
            # a stray ESC can never eat a Ctrl-C or an Enter.
            if c < 0x20 or c > 0x7E:
                self._esc = 0
            else:
                if self._esc == 1:
                    self._esc = 2 if c in (0x5B, 0x4F) else 0
                elif 0x40 <= c <= 0x7E:
                    self._esc = 0
                return
        if c == 0x1B:
            self._esc = 1
        elif c == 0x0D:
            self._after_cr = True
            self._enter()
        elif c == 0x0A:
            if not after_cr:  # CR LF is one Enter
                self._enter()
        elif c in (0x7F, 0x08):
            if self.line:
                self.line.pop()
                self._write(b"\b \b")
        elif c == 0x03:
            self.line.clear()
            self.write("^C\n")
            self.status = 130
            self.prompt()
        elif c == 0x15:
            if self.line:
                self._write(b"\b \b" * len(self.line))
                self.line.clear()
        elif c == 0x0C:
            self._write(b"\x1b[H\x1b[2J" + prompt_for(self.cwd).encode() + bytes(self.line))
        elif c >= 0x20 and c != 0x7F:
            if len(self.line) < MAX_LINE:
                self._bell = False
                self.line.append(c)
                self._write(bytes([c]))
            elif not self._bell:
                self._bell = True
                self._write(b"\x07")
        # other control characters are ignored, as readline does with unbound keys

    def _enter(self) -> None:
        text = self.line.decode("utf-8", "replace")
        self.line.clear()
        self._bell = False
        self.write("\n")
        if self.run_line(text) and self.foreground is None:
            self.prompt()

    # ---- commands -----------------------------------------------------------------------

    def run_line(self, text: str) -> bool:
        """Run the line's commands; False when one still waits (its prompt comes later)."""
        from xenconsole.dom0 import sh

        if sh.wants(self, text):  # shell language: &&, ||, variables, functions, sh -c
            return sh.run_line(self, text)
        return self._run_parts(_split_commands(text))

    def _run_parts(self, parts: list[str]) -> bool:
        for i, part in enumerate(parts):
            result = self._dispatch(part)
            rest = parts[i + 1 :]
            if isinstance(result, Pending):
                runner = self.current_runner()
                if runner is not None:
                    self.wait_pending(result, runner, lambda _st, rest=rest: self._run_parts(rest))
                    return False
                result = self._run_inline(result)
            self.status = result
            if self.foreground is not None:  # `xl console`: the rest waits for Ctrl-]
                self.after_foreground(lambda rest=rest: self._run_parts(rest))
                return False
        return True

    def current_runner(self) -> Runner | None:
        """Where a Pending's work runs: the set runner, else a worker thread when on a
        running reactor's thread; None: inline."""
        return self.runner or reactor_runner()

    def after_foreground(self, resume: Callable[[], bool]) -> None:
        """What runs when the foreground command returns: the rest of its line, True when
        the line is done (then the prompt)."""
        self._after_foreground = resume

    def foreground_done(self) -> None:
        """The foreground command returned: the rest of its line runs, then the prompt."""
        self.foreground = None
        resume, self._after_foreground = self._after_foreground, None
        if (resume is None or resume()) and self.foreground is None:
            self.prompt()

    def _run_inline(self, pending: Pending) -> int:
        try:
            value = pending.work()
        except Exception as e:
            value = e
        return self._finish(pending, value)

    def wait_pending(
        self,
        pending: Pending,
        runner: Runner,
        resume: Callable[[int], bool],
        abandon: Callable[[], None] | None = None,
    ) -> None:
        """Run `pending.work` through `runner` (off the console's thread), then its finish
        here and `resume(status)`: the rest of the line, True when the line is done (then
        the prompt and what was typed meanwhile). Ctrl-C gives the wait up and calls
        `abandon()`, which drops the rest of the line."""
        token = self.waiting = object()
        self._abandon = abandon

        def done(value):
            from twisted.python.failure import Failure

            if self.waiting is not token:
                return None  # given up with Ctrl-C
            self.waiting = None
            self._abandon = None
            if isinstance(value, Failure):
                value = value.value
            self.status = self._finish(pending, value)
            if not resume(self.status):
                return None  # another command of the line waits; keep what was typed
            if self.foreground is None:
                self.prompt()
            held, self._typeahead = self._typeahead, []
            for chunk in held:
                self.rx(chunk)
            return None

        runner(pending.work).addBoth(done)

    def _finish(self, pending: Pending, value: object) -> int:
        try:
            return pending.finish(value)
        except self.xl.XlExit as e:
            return e.status
        except Exception as e:  # never a traceback on the console
            self.eprintln(f"-bash: xl: internal error: {type(e).__name__}: {e}")
            return 1

    def run(self, text: str) -> int:
        """Run one command to its end on this thread (a Pending one too); its status."""
        result = self._dispatch(text)
        return self._run_inline(result) if isinstance(result, Pending) else result

    def _dispatch(self, text: str) -> int | Pending:
        try:
            argv = shlex.split(text, comments=True)
        except ValueError as e:
            self.eprintln(f"-bash: syntax error: {e}")
            return 2
        if not argv:
            return self.status
        argv = [a.replace("$?", str(self.status)) for a in argv]
        return self.dispatch_argv(argv)

    def dispatch_argv(self, argv: list[str]) -> int | Pending:
        """Run one command given as its words (xenconsole/dom0/sh.py calls this too)."""
        name = argv[0]
        try:
            if name == "xl":
                return self.xl.main(self, argv[1:])
            builtin = BUILTINS.get(name)
            if builtin is not None:
                return builtin(self, argv[1:])
        except Exception as e:  # never a traceback on the console
            self.eprintln(f"-bash: {name}: internal error: {type(e).__name__}: {e}")
            return 1
        self.eprintln(f"-bash: {name}: command not found")
        return 127


def prompt_for(cwd: str) -> str:
    """bash's `\\u@\\h:\\w\\$ `: the working directory, with ~ for /root."""
    if cwd == HOME or cwd.startswith(HOME + "/"):
        cwd = "~" + cwd[len(HOME) :]
    return f"root@dom0:{cwd}# "


_PRIVATE: list[Dom0Fs] = []


def _private_fs() -> Dom0Fs:
    """One private dom0 root per process for shells made without one (removed at exit)."""
    if not _PRIVATE:
        import atexit

        _PRIVATE.append(Dom0Fs.private())
        atexit.register(_PRIVATE[0].close)
    return _PRIVATE[0]


def _split_commands(text: str) -> list[str]:
    """Split on `;` outside quotes (enough for `xl debug-keys q; xl dmesg`)."""
    parts, _open_quote = split_unquoted(text)  # shlex reports an open quote per command
    return [p for p in parts if p.strip()] or [""]


def _echo(sh: Dom0Shell, args: list[str]) -> int:
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    sh.write(" ".join(args) + ("\n" if newline else ""))
    return 0


def _true(sh: Dom0Shell, args: list[str]) -> int:
    return 0


def _false(sh: Dom0Shell, args: list[str]) -> int:
    return 1


def _uname(sh: Dom0Shell, args: list[str]) -> int:
    from xenconsole.dom0.xl_info import DOM0_UNAME

    sh.println(DOM0_UNAME if "-a" in args else DOM0_UNAME.split()[0])
    return 0


def _hostname(sh: Dom0Shell, args: list[str]) -> int:
    sh.println("dom0")
    return 0


def _help(sh: Dom0Shell, args: list[str]) -> int:
    sh.println("Commands: xl, echo, true, false, uname, hostname, ls, cat, cd, pwd, help, clear")
    sh.println("Type 'xl help' for the toolstack; Ctrl-A three times switches to Xen.")
    return 0


def _clear(sh: Dom0Shell, args: list[str]) -> int:
    sh._write(b"\x1b[H\x1b[2J")
    return 0


BUILTINS: dict[str, Callable[[Dom0Shell, list[str]], int]] = {
    "ls": files.ls,
    "cat": files.cat,
    "cd": files.cd,
    "pwd": files.pwd,
    "echo": _echo,
    "true": _true,
    "false": _false,
    "uname": _uname,
    "hostname": _hostname,
    "help": _help,
    "clear": _clear,
}
BUILTINS.update(XENSTORE_COMMANDS)  # xenstore-ls, xenstore-read, xenstore-write
