"""Several hosts in one server: `xenconsole serve --config lab.toml`, like conserver.cf or
ser2net.yaml. A `--config` file with `[[console]]` tables is a lab file; one with `[host]`
and `[[domain]]` is one host's config (section 5 of docs/contract.md). One reactor runs
every host; each has its own machine, listeners and log.

    [server]
    pidfile = "/run/xenconsole.pid"      # optional (or --pidfile)

    [[console]]
    name = "xen1"                        # required, unique: [A-Za-z0-9_.-]+
    config = "xen1.toml"                 # host config (section 5); default: the default host
    telnet = "127.0.0.1:4555"            # listeners, as the serve options
    rfc2217 = "127.0.0.1:4556"
    telnet_ro = ["127.0.0.1:4565"]
    log = "xen1.log"
    log_timestamps = true

Every key of a `[[console]]` table but `name` is a `xenconsole serve` option with `_` for
`-` (a flag is `true`, a repeatable option a list), so a console accepts exactly what a
one-host server does, with the same one-line errors, prefixed by the console's name.
Relative paths are relative to the lab file. A console listens on nothing it does not name
(no default telnet). Ready lines: `xenconsole: NAME KIND WHERE` per listener, then
`xenconsole: ready`. SIGHUP reopens every console's log (and its .events file);
SIGINT/SIGTERM stop all.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from dataclasses import dataclass
from typing import Any

from emu.host import ConfigError
from xenconsole.options import UsageError

PATH_KEYS = {"config", "log", "tls_cert", "tls_key", "tls_ca", "password_file"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class LabConsole:
    name: str
    config: Any  # serve.ServeConfig


@dataclass
class Lab:
    consoles: list[LabConsole]
    pidfile: str | None = None


def _serve_dests(build_parser) -> dict[str, Any]:
    """The `xenconsole serve` options: dest -> argparse action (`build_parser` is the CLI's,
    passed in: this module does not import the CLI)."""
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "cmd")
    serve = sub.choices["serve"]
    return {a.dest: a for a in serve._actions if a.dest not in ("help", "pidfile")}


def _argv(name: str, table: dict, base: str, dests: dict) -> list[str]:
    argv: list[str] = []
    for key, value in table.items():
        if key == "name":
            continue
        action = dests.get(key)
        if action is None or key == "plugin":
            raise UsageError(f"console {name}: unknown key {key!r}")
        flag = action.option_strings[0]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                if action.nargs != 0:
                    raise UsageError(f"console {name}: {key} needs a value, not {v}")
                if v:
                    argv.append(flag)
                continue
            if action.nargs == 0:
                raise UsageError(f"console {name}: {key} is true or false, not {v!r}")
            text = str(v)
            if key in PATH_KEYS and text and not os.path.isabs(text):
                text = os.path.join(base, text)
            argv += [flag, text]
    if "telnet" not in table:
        argv.append("--no-telnet")
    return argv


def is_lab_file(path: str) -> bool:
    """A TOML file with `[[console]]` tables (unreadable or bad files: not ours to judge;
    the host config loader says what is wrong)."""
    try:
        with open(path, "rb") as f:
            return "console" in tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return False


def load_lab(path: str, build_parser, plugins: list[str] | None = None) -> Lab:
    """Read and check a lab file; UsageError or ConfigError in one line."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read lab file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: {e}") from None
    unknown = set(doc) - {"server", "console"}
    if unknown:
        raise UsageError(f"{path}: unknown table {sorted(unknown)[0]!r}")
    server = doc.get("server", {})
    if set(server) - {"pidfile"}:
        raise UsageError(f"{path}: [server]: unknown key {sorted(set(server) - {'pidfile'})[0]!r}")
    tables = doc.get("console", [])
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{path}: no [[console]]")
    from xenconsole.serve import parse

    base = os.path.dirname(os.path.abspath(path))
    dests = _serve_dests(build_parser)
    consoles, names = [], set()
    for i, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(f"{path}: console {i}: name must be [A-Za-z0-9_.-]+")
        if name in names:
            raise UsageError(f"{path}: duplicate console {name!r}")
        names.add(name)
        argv = _argv(name, table, base, dests)
        for p in plugins or []:
            argv += ["--plugin", p]
        args = build_parser().parse_args(["serve", *argv])
        try:
            config = parse(args)
        except (UsageError, ConfigError) as e:
            raise UsageError(f"console {name}: {e}") from None
        consoles.append(LabConsole(name, config))
    pidfile = server.get("pidfile")
    if pidfile is not None and not os.path.isabs(pidfile):
        pidfile = os.path.join(base, pidfile)
    return Lab(consoles, pidfile)


def serve_lab(args, build_parser) -> int:
    """`xenconsole serve --config LAB.toml`: 2 after one error line, else never returns.
    Per-host options on the command line are refused: they belong in the lab file."""
    from xenconsole.serve import _fail

    path, pidfile, plugins = args.config, args.pidfile, args.plugin
    dests = _serve_dests(build_parser)
    unset = (None, False, [])
    given = [
        d
        for d, a in dests.items()
        if d not in ("config", "plugin") and getattr(args, d, None) not in (*unset, a.default)
    ]
    if given:
        flag = dests[given[0]].option_strings[0]
        return _fail(f"{flag}: with a lab file, set it per [[console]] in {path}")
    try:
        lab = load_lab(path, build_parser, plugins)
    except (UsageError, ConfigError) as e:
        return _fail(str(e))
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from xenconsole.hostrunner import HostRunner
    from xenconsole.serve import listen

    started = []
    for c in lab.consoles:
        runner = HostRunner(reactor, c.config.host, wait=c.config.wait)
        try:
            opened = listen(reactor, c.config, runner.hub)
        except (CannotListenError, OSError, UsageError) as e:
            for _c, _r, o in started:
                o.close()
            if isinstance(e, CannotListenError):
                why = getattr(e.socketError, "strerror", None) or e.socketError
                return _fail(f"console {c.name}: cannot listen on {e.interface}:{e.port}: {why}")
            return _fail(f"console {c.name}: {e}")
        started.append((c, runner, opened))
    pidfile = pidfile or lab.pidfile
    if pidfile:
        from xenconsole.logfiles import write_pidfile

        try:
            write_pidfile(pidfile)
        except OSError as e:
            return _fail(f"cannot write pidfile {pidfile}: {e.strerror}")
    run_lab(reactor, started, pidfile)


def run_lab(reactor, started: list, pidfile: str | None):
    import signal

    from xenconsole.logfiles import Reopeners, install_sighup, remove_pidfile
    from xenconsole.serve import hup_hook

    def _early_stop(signum, frame) -> None:
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early_stop)
    reopeners = Reopeners()
    for c, runner, opened in started:
        hook = hup_hook(c.config, runner.hub, opened)
        if hook is not None:
            reopeners.add(hook)
    install_sighup(reactor, reopeners)
    for c, _runner, opened in started:
        ro = {id(li) for _t, li in opened.listeners[len(c.config.transports) :]}
        for t, listener in opened.listeners:
            kind = f"{t.kind}-ro" if id(listener) in ro else t.kind
            print(f"xenconsole: {c.name} {kind} {listener.where}")
    print("xenconsole: ready", flush=True)

    def _cleanup() -> None:
        for _c, runner, opened in started:
            runner.stop()
            opened.close()

    reactor.addSystemEventTrigger("before", "shutdown", _cleanup)
    for _c, runner, _o in started:
        runner.start()
    reactor.run()
    for _c, runner, opened in started:
        opened.close_logs(runner.hub)
    remove_pidfile(pidfile)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
