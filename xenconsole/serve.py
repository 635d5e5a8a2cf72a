"""`xenconsole serve`: parse the options, listen on every transport, run until SIGINT/SIGTERM."""

from __future__ import annotations

import os
import signal
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from emu.host import ConfigError, HostConfig
from xenconsole.hub import Listener
from xenconsole.options import Address, UsageError, host_from_args, is_loopback, load_keys
from xenconsole.transports import TRANSPORTS, Transport


@dataclass
class ServeConfig:
    """The options of one `xenconsole serve`, checked."""

    host: HostConfig
    transports: list[tuple[Transport, Any]]  # each transport asked for, with its parsed value
    wait: bool = True
    log: str | None = None
    log_events: bool = False
    plugins: list[str] = field(default_factory=list)
    dom0_root: str | None = None  # None: a fresh private directory, removed at exit
    control: str | None = None  # the control socket's path; None: no control channel


@dataclass
class Opened:
    """What `listen` opened: the listeners in ready-line order and the log file."""

    listeners: list[tuple[Transport, Listener]]
    log: Any = None
    events: Any = None  # FILE.events with --log-events
    extra: list[tuple[str, Listener]] = field(default_factory=list)  # (ready-line word, ...)
    dom0_fs: Any = None

    def close(self) -> None:
        for _t, listener in self.listeners:
            listener.close()
        for _kind, listener in self.extra:
            listener.close()
        if self.dom0_fs is not None:
            self.dom0_fs.close()

    def close_logs(self, hub) -> None:
        """Close the log files; a failure (disk full) is one line on stderr, never a
        traceback, and none at all if the hub already said logging stopped."""
        for f, already_failed in ((self.log, hub.log is None), (self.events, False)):
            if f is None:
                continue
            try:
                f.close()
            except (OSError, ValueError) as e:
                if not already_failed:
                    sys.stderr.write(f"xenconsole: log write failed ({e}); output lost\n")
                try:  # the buffer could not be written: drop it, close the descriptor
                    os.close(f.fileno())
                except (OSError, ValueError):
                    pass
        self.log = self.events = None


def open_log(path: str) -> Any:
    """The `--log` file, opened for appending; UsageError in one line. A FIFO is refused:
    opening one blocks until a reader appears, and the server would never be ready."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"cannot open log {path}: {e.strerror}") from None
    if st is not None and stat.S_ISFIFO(st.st_mode):
        raise UsageError(f"cannot open log {path}: is a FIFO (give a regular file)")
    if st is not None and stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"cannot open log {path}: is a socket (give a regular file)")
    try:
        # O_NONBLOCK: a FIFO created between the check and the open fails (ENXIO) instead
        # of blocking; it has no effect on a regular file.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
    except OSError as e:
        raise UsageError(f"cannot open log {path}: {e.strerror}") from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def _off(args, t: Transport) -> bool:
    return t.default is not None and getattr(args, f"no_{t.kind}")


def parse(args) -> ServeConfig:
    """Check every option (and load the keys) before anything is opened; UsageError or
    ConfigError says what is wrong in one line."""
    host = host_from_args(args)
    transports = []
    for t in TRANSPORTS:
        value = getattr(args, t.kind)
        # `is None`: an empty value is a bad address, not a missing option.
        value = t.default if value is None else value
        if value is not None and not _off(args, t):
            transports.append((t, t.parse(value, t.kind)))
    for t in TRANSPORTS:
        if _off(args, t) and getattr(args, t.kind) is not None:
            raise UsageError(f"{t.flag} and --no-{t.kind} cannot be used together")
    if args.log_events and not args.log:
        raise UsageError("--log-events needs --log FILE")
    load_keys(args.plugin)
    config = ServeConfig(host, transports, not args.no_wait, args.log, args.log_events, args.plugin)
    config.dom0_root, config.control = _parse_dom0(args)
    return config


def _parse_dom0(args) -> tuple[str | None, str | None]:
    """`--dom0-root DIR` (checked) and the control socket's path (`--control PATH`, else one
    in the runtime directory, or none with `--no-control`)."""
    root = getattr(args, "dom0_root", None)
    if root is not None and not os.path.isdir(root):
        raise UsageError(f"--dom0-root: {root}: not a directory")
    if getattr(args, "no_control", False):
        if getattr(args, "control", None) is not None:
            raise UsageError("--control and --no-control cannot be used together")
        return root, None
    control = getattr(args, "control", None)
    if control is None:
        from xenconsole.control import default_control_path

        control = default_control_path()
    elif not control:
        raise UsageError("--control: empty path")
    return root, control


def open_dom0_fs(config: ServeConfig):
    """dom0's filesystem: `--dom0-root DIR` (its /root made if missing), else a private one."""
    from xenconsole.dom0.fs import HOME, Dom0Fs

    if config.dom0_root is None:
        return Dom0Fs.private()
    fs = Dom0Fs(config.dom0_root)
    os.makedirs(os.path.join(fs.root, HOME.lstrip("/")), exist_ok=True)
    return fs


def listen_control(reactor, config: ServeConfig, runner, opened: Opened) -> None:
    """The control channel (xenconsole/control.py), when asked for; UsageError."""
    if config.control is None:
        return
    from xenconsole.control import listen as control_listen

    opened.extra.append(
        ("control", control_listen(reactor, runner, runner.dom0_fs, config.control))
    )


def listen(reactor, config: ServeConfig, hub) -> Opened:
    """Start every transport, then open the log; on any failure close what was opened and
    raise (CannotListenError, OSError or UsageError)."""
    opened = Opened([])
    try:
        for t, value in config.transports:
            opened.listeners.append((t, t.listen(reactor, hub, value)))
        # Opened last, so a bad option never leaves a new empty log file behind.
        if config.log:
            opened.log = open_log(config.log)
            hub.log = opened.log
        if config.log_events:
            from xenconsole.eventlog import events_path
            from xenconsole.eventlog import install as install_event_log

            try:
                opened.events = install_event_log(hub, config.log)
            except ValueError as e:
                raise UsageError(str(e)) from None
            except OSError as e:
                where = events_path(config.log)
                raise UsageError(f"cannot open event log {where}: {e.strerror}") from None
    except BaseException:
        opened.close()
        opened.close_logs(hub)
        raise
    return opened


def run(reactor, config: ServeConfig, runner, opened: Opened) -> NoReturn:
    """Print the ready lines, power on (or wait for the first client), run the reactor; leave
    the process when it stops."""
    for t, value in config.transports:
        if isinstance(value, Address) and not is_loopback(value.host):
            sys.stderr.write(
                f"xenconsole: warning: {t.kind} listens on {value.host}, not loopback; "
                "the console is unauthenticated, as a real serial line is\n"
            )

    # A signal between the ready line and reactor.run() (which installs Twisted's own
    # handlers) must still mean a clean stop, not death by SIGTERM.
    def _early_stop(signum, frame) -> None:
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early_stop)
    for t, listener in opened.listeners:
        print(f"xenconsole: {t.kind} {listener.where}")
    for kind, listener in opened.extra:
        print(f"xenconsole: {kind} {listener.where}")
    print("xenconsole: ready", flush=True)

    def _cleanup() -> None:
        runner.stop()
        opened.close()

    reactor.addSystemEventTrigger("before", "shutdown", _cleanup)
    runner.start()
    reactor.run()
    opened.close_logs(runner.hub)
    # Every vCPU thread has stopped (runner.stop), the log is closed: leave without the
    # interpreter's teardown, which could free guest RAM under a Unicorn instance that
    # still maps it (seen as an occasional SIGSEGV after a clean stop).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _fail(msg: str) -> int:
    sys.stderr.write(f"xenconsole: error: {msg}\n")
    return 2


def serve(args) -> int:
    """`xenconsole serve`: returns 2 after one error line, else never returns."""
    try:
        config = parse(args)
    except (ConfigError, UsageError) as e:
        return _fail(str(e))

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from xenconsole.hostrunner import HostRunner

    try:
        dom0_fs = open_dom0_fs(config)
    except OSError as e:
        return _fail(f"--dom0-root: {config.dom0_root}: {e.strerror}")
    runner = HostRunner(reactor, config.host, wait=config.wait, dom0_fs=dom0_fs)
    try:
        try:
            opened = listen(reactor, config, runner.hub)
        except BaseException:
            dom0_fs.close()
            raise
        opened.dom0_fs = dom0_fs
        try:
            listen_control(reactor, config, runner, opened)
        except BaseException:
            opened.close()  # the dom0 filesystem too
            raise
    except CannotListenError as e:
        why = getattr(e.socketError, "strerror", None) or e.socketError
        return _fail(f"cannot listen on {e.interface}:{e.port}: {why}")
    except OSError as e:
        if e.strerror:
            return _fail(e.strerror if e.filename is None else f"{e.filename}: {e.strerror}")
        return _fail(str(e))
    except UsageError as e:
        return _fail(str(e))
    run(reactor, config, runner, opened)
