"""Start listeners, print the ready lines, run the reactor until SIGINT/SIGTERM."""

from __future__ import annotations

import os
import signal
import sys

from emu.host import ConfigError
from xenconsole.cli import DEFAULT_TELNET, UsageError, host_from_args, is_loopback, parse_listen
from xenconsole.outbuf import DEFAULT_LIMIT


def _fail(msg: str) -> int:
    sys.stderr.write(f"xenconsole: error: {msg}\n")
    return 2


def serve(args) -> int:
    try:
        host = host_from_args(args)
        # `is not None`: an empty value is a bad address, not a missing option.
        telnet_arg = DEFAULT_TELNET if args.telnet is None else args.telnet
        telnet = None if args.no_telnet else parse_listen(telnet_arg, "telnet")
        tcp = parse_listen(args.tcp, "tcp") if args.tcp is not None else None
        rfc2217 = parse_listen(args.rfc2217, "rfc2217") if args.rfc2217 is not None else None
    except (ConfigError, UsageError) as e:
        return _fail(str(e))
    if args.no_telnet and args.telnet is not None:
        return _fail("--telnet and --no-telnet cannot be used together")
    if args.log_events and not args.log:
        return _fail("--log-events needs --log FILE")

    import keyhandlers

    try:
        keyhandlers.load_builtin()
        keyhandlers.load_entry_points()
        keyhandlers.load_modules(args.plugin)
    except Exception as e:
        return _fail(f"plugin: {e}")

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from xenconsole.hostrunner import HostRunner, ServeOptions
    from xenconsole.transports.tcp import ConsoleFactory, RawClient, TelnetClient

    opts = ServeOptions(host=host, wait=not args.no_wait, log_path=args.log, plugins=args.plugin)
    runner = HostRunner(reactor, opts, None)
    ready: list[str] = []
    ports = []
    pty = None
    try:
        for kind, addr, cls in (("telnet", telnet, TelnetClient), ("tcp", tcp, RawClient)):
            if addr is None:
                continue
            port = reactor.listenTCP(
                addr[1], ConsoleFactory(runner.hub, cls, DEFAULT_LIMIT), interface=addr[0]
            )
            ports.append(port)
            h = port.getHost()
            ready.append(f"xenconsole: {kind} {addr[0]}:{h.port}")
        if rfc2217 is not None:
            try:
                from xenconsole.transports.rfc2217 import RFC2217Factory
            except ImportError:
                raise UsageError("--rfc2217 is not available in this build") from None
            port = reactor.listenTCP(rfc2217[1], RFC2217Factory(runner.hub), interface=rfc2217[0])
            ports.append(port)
            ready.append(f"xenconsole: rfc2217 {rfc2217[0]}:{port.getHost().port}")
        if args.pty is not None:
            from xenconsole.transports.pty import PtyClient

            pty = PtyClient(runner.hub, reactor, link=args.pty or None)
            ready.append(f"xenconsole: pty {pty.path}")
        # Opened last, so a bad option never leaves a new empty log file behind.
        log = None
        if args.log:
            try:
                log = open(args.log, "ab")  # noqa: SIM115 - lives as long as the server
            except OSError as e:
                raise UsageError(f"cannot open log {args.log}: {e.strerror}") from None
            runner.hub.log = log
        if args.log_events:
            from xenconsole.eventlog import install as install_event_log

            try:
                install_event_log(runner.hub)
            except ValueError as e:
                raise UsageError(str(e)) from None
    except (CannotListenError, OSError, UsageError) as e:
        for p in ports:
            p.stopListening()
        if pty is not None:
            pty.close()
        if isinstance(e, CannotListenError):
            why = getattr(e.socketError, "strerror", None) or e.socketError
            return _fail(f"cannot listen on {e.interface}:{e.port}: {why}")
        if isinstance(e, OSError) and e.strerror:
            return _fail(e.strerror if e.filename is None else f"{e.filename}: {e.strerror}")
        return _fail(str(e))

    for kind, addr in (("telnet", telnet), ("tcp", tcp), ("rfc2217", rfc2217)):
        if addr is not None and not is_loopback(addr[0]):
            sys.stderr.write(
                f"xenconsole: warning: {kind} listens on {addr[0]}, not loopback; "
                "the console is unauthenticated, as a real serial line is\n"
            )

    # A signal between the ready line and reactor.run() (which installs Twisted's own
    # handlers) must still mean a clean stop, not death by SIGTERM.
    def _early_stop(signum, frame) -> None:
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early_stop)
    for line in ready:
        print(line)
    print("xenconsole: ready", flush=True)

    def _cleanup() -> None:
        runner.stop()
        if pty is not None:
            pty.close()

    reactor.addSystemEventTrigger("before", "shutdown", _cleanup)
    runner.start()
    reactor.run()
    if log is not None:
        log.close()
    # Every vCPU thread has stopped (runner.stop), the log is closed: leave without the
    # interpreter's teardown, which could free guest RAM under a Unicorn instance that
    # still maps it (seen as an occasional SIGSEGV after a clean stop).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
