"""SIGHUP: reopen the log files, as daemons do after logrotate renames them.

A server keeps appending to the file it opened; after logrotate's `rename` the old name is
someone else's and the output would go on landing in `FILE.1` forever. On SIGHUP every
registered log is opened again by its path (a new file if it was renamed) and the old one
is closed. SIGHUP never stops the server.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from xenconsole.options import UsageError


class Reopeners:
    """What SIGHUP reopens: callables run in order on the reactor's thread."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []
        self.count = 0  # how many SIGHUPs were handled (for tests and the event log)

    def add(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def reopen(self) -> None:
        self.count += 1
        for hook in list(self.hooks):
            try:
                hook()
            except (OSError, UsageError) as e:  # keep serving; one line says which file failed
                sys.stderr.write(f"xenconsole: reopen failed: {e}\n")


def reopen_hub_log(hub, path: str, opener: Callable[[str], Any]) -> Callable[[], Any]:
    """A hook that swaps the hub's log for a freshly opened `path`; returns the hook. The
    hook returns the new file; the old one is closed after everything before is written."""

    def hook() -> Any:
        new = opener(path)
        hub.flush()  # output gathered so far belongs in the old file
        old, hub.log = hub.log, new
        if old is not None:
            try:
                old.close()
            except (OSError, ValueError) as e:
                sys.stderr.write(f"xenconsole: closing the old log failed ({e})\n")
        return new

    return hook


class SideFile:
    """An append-only file beside the console log (`FILE.events`) that SIGHUP
    reopens by its path, as the log itself: logrotate renames all three.

    `write` appends one line and flushes it. A failed write (disk full) raises once and
    gives the file up: later writes are dropped silently until the next reopen, so the
    caller says so in one line, not one per event."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f: BinaryIO = open(path, "ab")  # noqa: SIM115 - lives as long as the server
        self.stopped = False

    def write(self, line: bytes) -> None:
        if self.stopped:
            return
        try:
            self.f.write(line)
            self.f.flush()
        except (OSError, ValueError):
            self.stopped = True
            raise

    def reopen(self) -> None:
        """Open the path again (a new file if it was renamed), then close the old file;
        OSError (the old file kept) if the path cannot be opened."""
        new = open(self.path, "ab")  # noqa: SIM115 - lives as long as the server
        old, self.f, self.stopped = self.f, new, False
        _close_quietly(old)

    def fileno(self) -> int:
        return self.f.fileno()

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


def _close_quietly(f) -> None:
    """Close a file whose buffer may not be writable any more (the write that failed is
    still in it): the descriptor is closed anyway."""
    try:
        f.close()
    except (OSError, ValueError) as e:
        sys.stderr.write(f"xenconsole: closing the old log failed ({e})\n")
        try:
            os.close(f.fileno())
        except (OSError, ValueError):
            pass


def reopen_each(*hooks: Callable[[], Any]) -> Callable[[], None]:
    """One SIGHUP hook running every hook, each on its own: a file that cannot be reopened
    is one line on stderr and the others are still reopened."""

    def hook() -> None:
        for h in hooks:
            try:
                h()
            except (OSError, UsageError) as e:  # open_log's one line names the file
                sys.stderr.write(f"xenconsole: reopen failed: {e}\n")

    return hook


def install_sighup(reactor, reopeners: Reopeners) -> None:
    """SIGHUP reopens the logs on the reactor's thread (never in the signal handler itself:
    a write could be half done there)."""

    def on_hup(signum, frame) -> None:
        reactor.callFromThread(reopeners.reopen)

    signal.signal(signal.SIGHUP, on_hup)


def write_pidfile(path: str) -> None:
    """`--pidfile`: this process's id; OSError if it cannot be written."""
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")


def remove_pidfile(path: str | None) -> None:
    """Remove the pidfile at exit, if it is still ours."""
    if path:
        try:
            with open(path) as f:
                mine = f.read().strip() == str(os.getpid())
            if mine:
                os.unlink(path)
        except OSError:
            pass
