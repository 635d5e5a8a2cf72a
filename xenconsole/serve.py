"""`xenconsole serve`: parse the options, listen on every transport, run until SIGINT/SIGTERM."""

from __future__ import annotations

import os
import signal
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from emu.host import ConfigError, HostConfig
from xenconsole.access import AccessConfig
from xenconsole.hub import Listener
from xenconsole.labopts import LabOptions
from xenconsole.options import Address, UsageError, host_from_args, load_keys
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
    lab: LabOptions = field(default_factory=LabOptions)
    access: AccessConfig = field(default_factory=AccessConfig)


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
        files = ((self.log, hub.log is None), (self.events, False))
        for f, already_failed in files:
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
    from xenconsole import access, labopts

    lab = labopts.parse(args, args.log)
    addresses = [(t.flag, v) for t, v in transports if isinstance(v, Address)]
    addresses += [(f"{t.flag}-ro", v) for t, v in lab.ro if isinstance(v, Address)]
    auth = access.parse(args, addresses)
    load_keys(args.plugin)
    config = ServeConfig(
        host, transports, not args.no_wait, args.log, args.log_events, args.plugin,
        lab=lab, access=auth,
    )  # fmt: skip
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
    from xenconsole import labopts
    from xenconsole.access import AuthReactor, RateLimiter

    limiter = RateLimiter()

    def reactor_for(value) -> Any:
        """A listener that needs authentication listens through AuthReactor."""
        if isinstance(value, Address) and config.access.needs_auth(value.host):
            return AuthReactor(reactor, config.access, limiter)
        return reactor

    opened = Opened([])
    try:
        for t, value in config.transports:
            opened.listeners.append((t, t.listen(reactor_for(value), hub, value)))
        opened.listeners += labopts.spectator_listeners(reactor_for, hub, config.lab)
        # Opened last, so a bad option never leaves a new empty log file behind.
        if config.log:
            opened.log = open_log(config.log)
            hub.log = opened.log
        labopts.apply(hub, config.lab)
        if config.log_events or config.lab.log_input:  # typed input is an event too
            from xenconsole.eventlog import events_path, install_input
            from xenconsole.eventlog import install as install_event_log

            try:
                opened.events = install_event_log(hub, config.log)
            except ValueError as e:
                raise UsageError(str(e)) from None
            except OSError as e:
                where = events_path(config.log)
                raise UsageError(f"cannot open event log {where}: {e.strerror}") from None
            if config.lab.log_input:
                install_input(hub, opened.events)
    except BaseException:
        opened.close()
        opened.close_logs(hub)
        raise
    return opened


def run(reactor, config: ServeConfig, runner, opened: Opened) -> NoReturn:
    """Print the ready lines, power on (or wait for the first client), run the reactor; leave
    the process when it stops. (A listener off loopback is never unauthenticated: parse()
    refused it, or it listens with TLS client certificates or a password, access.py.)"""

    # A signal between the ready line and reactor.run() (which installs Twisted's own
    # handlers) must still mean a clean stop, not death by SIGTERM.
    def _early_stop(signum, frame) -> None:
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early_stop)
    _reopen_on_hup(reactor, config, runner.hub, opened)
    ro = {id(listener) for _t, listener in opened.listeners[len(config.transports) :]}
    for t, listener in opened.listeners:
        kind = f"{t.kind}-ro" if id(listener) in ro else t.kind
        print(f"xenconsole: {kind} {listener.where}")
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


def hup_hook(config: ServeConfig, hub, opened: Opened):
    """What SIGHUP does for this host: reopen `--log` by its name, then `FILE.events`
    beside it (xenconsole/logfiles.py); None without a log."""
    if not config.log:
        return None
    from xenconsole.logfiles import reopen_each, reopen_hub_log

    def opener(path: str) -> Any:
        opened.log = open_log(path)
        if config.lab.log_timestamps:
            from xenconsole.labopts import TimestampedLog

            return TimestampedLog(opened.log)
        return opened.log

    swap = reopen_hub_log(hub, config.log, opener)

    def side(name: str):
        def reopen() -> None:
            f = getattr(opened, name)
            if f is not None:
                f.reopen()

        return reopen

    # The log first: an event's offset after the reopen is one in the new log.
    return reopen_each(swap, side("events"))


def _reopen_on_hup(reactor, config: ServeConfig, hub, opened: Opened) -> None:
    """SIGHUP reopens `--log`; without a log it is ignored. It never stops the server."""
    from xenconsole.logfiles import Reopeners, install_sighup

    reopeners = Reopeners()
    hook = hup_hook(config, hub, opened)
    if hook is not None:
        reopeners.add(hook)
    install_sighup(reactor, reopeners)


def _fail(msg: str) -> int:
    sys.stderr.write(f"xenconsole: error: {msg}\n")
    return 2


def serve(args) -> int:
    """`xenconsole serve`: returns 2 after one error line, else never returns."""
    from xenconsole.logfiles import remove_pidfile, write_pidfile

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
    if args.pidfile:
        try:
            write_pidfile(args.pidfile)
        except OSError as e:
            opened.close()
            return _fail(f"cannot write pidfile {args.pidfile}: {e.strerror}")
        reactor.addSystemEventTrigger("after", "shutdown", remove_pidfile, args.pidfile)
    run(reactor, config, runner, opened)
