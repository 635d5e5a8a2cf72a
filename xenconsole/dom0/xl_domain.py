"""`xl create`, `xl destroy` (tools/xl/xl_vmcontrol.c) with xl-style config files (xl_parse.c).

A config file is xl's syntax: `key = value` statements (newline or `;` separated, `#`
comments), values are numbers, "strings"/'strings' or [lists]. A config file is required
(xl_vmcontrol.c create_domain); KEY=VALUE arguments are appended to the file's text, as xl
does, so a string value needs its quotes there too (`'name="web"'`). Keys: name, memory
(MiB), maxmem (MiB), vcpus, workload; for 64-bit PV guests (emu/pv/) type, kernel,
cmdline/extra, on_poweroff/on_crash/on_reboot, and the legacy loader (ignored, as xl does).
Other keys are refused (a real xl ignores keys it does not know; here they would silently
do nothing).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re

from emu import asm
from emu.domain_build import kernel_image
from emu.domctl import DomainError, validate_spec
from emu.host import DomainSpec
from emu.workload import WorkloadError, check_workload, parse_workload
from xenconsole.dom0.fs import Dom0Fs, FsError
from xenconsole.dom0.lex import split_unquoted
from xenconsole.dom0.shell import Pending
from xenconsole.dom0.xl import CMD_TABLE, XlExit, command, find_domain, getopts, help_text

KEYS = ("name", "memory", "maxmem", "vcpus", "workload", "type", "kernel", "cmdline", "extra")
KEYS += ("loader", "on_poweroff", "on_crash", "on_reboot", "max_event_channels")
KEYS += ("viridian",)  # loader: legacy, ignored; viridian: HVM-only, ignored for PV (as xl)
INT_KEYS = ("memory", "maxmem", "vcpus", "max_event_channels")
ANY_KEYS = ("viridian",)  # any value (xl: a boolean or a list)
ERROR_FAIL = 3  # xl create returns -ERROR_FAIL
ERROR_INVAL = 6  # -ERROR_INVAL (libxl_types.idl:53)
MAX_CONFIG = 1 << 20

_STMT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_NUM = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)$")
_IDENT = re.compile(r"[a-z][._0-9a-z]*")  # libxlu_cfg_l.l:55, a key, never a value


class ConfigParseError(Exception):
    pass


def _split_statements(text: str):
    """(line number, statement) pairs: `#` comments and `;` separators outside quotes."""
    for lineno, raw in enumerate(text.splitlines(), 1):
        parts, open_quote = split_unquoted(raw, ";", comment="#")
        if open_quote:
            raise ConfigParseError(f"{lineno}: unterminated string")
        for part in parts:
            yield lineno, part


class _UnquotedWord(ValueError):
    """A bare word where a value belongs: libxlu's lexer makes it an IDENT token."""


def _value(text: str):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if _NUM.match(text):
        return int(text, 0)
    if text.startswith("[") and text.endswith("]"):
        return [_value(x.strip()) for x in text[1:-1].split(",") if x.strip()]
    ident = _IDENT.match(text)
    if ident:
        raise _UnquotedWord(ident.group(0))
    raise ValueError(text)


def parse_config(text: str, source: str) -> dict:
    """xl config text -> {key: value}; later statements override earlier ones."""
    cfg: dict = {}
    for lineno, stmt in _split_statements(text):
        if not stmt.strip():
            continue
        m = _STMT.match(stmt)
        if not m:
            near = (stmt.strip().split() or [""])[0][:40]
            raise ConfigParseError(
                f"{source}:{lineno}: config parsing error near `{near}': syntax error"
            )
        key, raw = m.groups()
        try:
            value = _value(raw)
        except _UnquotedWord as e:
            # libxlu_cfg.c:699 with bison's %error-verbose message (libxlu_cfg_y.y:33).
            raise ConfigParseError(
                f"{source}:{lineno}: config parsing error near `{e.args[0]}': syntax error, "
                "unexpected IDENT, expecting STRING or NUMBER or '['"
            ) from None
        except ValueError:
            raise ConfigParseError(
                f"{source}:{lineno}: config parsing error near `{raw[:40]}': syntax error"
            ) from None
        if key not in KEYS:
            raise ConfigParseError(
                f"{source}:{lineno}: unknown parameter `{key}' (supported: {', '.join(KEYS)})"
            )
        if key in INT_KEYS:
            if isinstance(value, str) and _NUM.match(value):
                value = int(value, 0)
            if not isinstance(value, int):
                raise ConfigParseError(
                    f"{source}:{lineno}: parameter `{key}' is not a valid number"
                )
        elif key not in ANY_KEYS and not isinstance(value, str):
            raise ConfigParseError(f"{source}:{lineno}: parameter `{key}' must be a string")
        cfg[key] = value
    return cfg


def spec_from_config(cfg: dict) -> DomainSpec | None:
    if not cfg.get("name"):
        return None
    spec = DomainSpec(name=cfg["name"])
    for key in ("memory", "maxmem", "vcpus", "workload", "type", "kernel", "cmdline"):
        if key in cfg:
            setattr(spec, key, cfg[key])
    if "extra" in cfg and "cmdline" not in cfg:  # xl_parse.c: extra= is the old cmdline=
        spec.cmdline = cfg["extra"]
    for key in ("on_poweroff", "on_crash", "on_reboot", "max_event_channels"):
        if key in cfg:
            setattr(spec, key, cfg[key])
    return spec


def _create_args(sh, argv: list[str]):
    """main_create(): [FILE] [options] [FILE] [KEY=VALUE ...]."""
    config_file = None
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        config_file, argv = argv[0], argv[1:]
    opts, rest = getopts(
        sh,
        argv,
        "AFVcdef:inpq",
        [
            "defconfig=",
            "dryrun",
            "ignore-global-affinity-masks",
            "quiet",
            "vncviewer",
            "vncviewer-autopass",
        ],
        "create",
        0,
    )
    flags = set()
    for o, a in opts:
        if o in ("-f", "--defconfig"):
            config_file = a
        flags.add(o)
    extra = []
    for arg in rest:
        if "=" in arg:
            extra.append(arg)
        elif config_file is None:
            config_file = arg
        else:
            sh.write(help_text("create"))
            raise XlExit(2)
    return config_file, extra, flags


@command(
    "create",
    "Create a domain from config file <filename>",
    "<ConfigFile> [options] [vars]",
    "-c                      Connect to the console after the domain is created.\n"
    "-d                      Enable debug messages.\n"
    "-e                      Do not wait in the background for the death of the domain.\n"
    "-F                      Run in foreground until death of the domain.\n"
    "-f FILE, --defconfig=FILE\n                     Use the given configuration file.\n"
    "-h                      Print this help.\n"
    "-n, --dryrun            Dry run - prints the resulting configuration\n"
    "                         (deprecated in favour of global -N option).\n"
    "-p                      Leave the domain paused after it is created.\n"
    "-q, --quiet             Quiet.\n"
    "-V, --vncviewer         Connect to the VNC display after the domain is created.\n"
    "-A, --vncviewer-autopass\n"
    "                        Pass VNC password to viewer via stdin.\n"
    "--ignore-global-affinity-masks Ignore global masks in xl.conf.",
    modifies=True,
    can_dryrun=True,
)
def main_create(sh, argv: list[str]) -> int | Pending:
    config_file, extra, flags = _create_args(sh, argv)
    if config_file is None:
        # xl_vmcontrol.c:838: no file and no save file; main_create returns -ERROR_INVAL.
        sh.eprintln("Config file not specified and none in save file")
        return ERROR_INVAL
    text = ""
    try:
        try:
            # dom0's own filesystem (xenconsole/dom0/fs.py): nothing outside it is opened.
            if config_file != "/dev/null":
                text = sh.fs.read(config_file, sh.cwd, MAX_CONFIG).decode("utf-8", "replace")
        except FsError as e:
            why = os.strerror(errno.EINVAL) if e.errno == errno.EISDIR else e.strerror
            sh.eprintln(f"Failed to read config file: {config_file}: {why}")
            return ERROR_FAIL
        if extra:
            # xl_vmcontrol.c:831: "\n%s\n" of the arguments, each ended by "\n" (main_create).
            text += "\n" + "".join(arg + "\n" for arg in extra) + "\n"
        if not ({"-q", "--quiet"} & flags):
            sh.eprintln(f"Parsing config from {config_file}")
        cfg = parse_config(text, config_file)
    except ConfigParseError as e:
        sh.eprintln(str(e))
        sh.eprintln("Failed to parse config: Invalid argument")
        return 1
    spec = spec_from_config(cfg)
    if spec is None:
        sh.eprintln("Domain name must be specified.")
        return 1
    # kernel= is dom0's path: read from dom0's filesystem only (emu/pv/build.py read_kernel).
    fs, cwd = sh.fs, sh.cwd
    spec.read_file = lambda path: fs.read(path, cwd)
    if {"-n", "--dryrun"} & flags:
        sh.println(
            f'name = "{spec.name}"\nmemory = {spec.memory}\n'
            f"maxmem = {spec.maxmem if spec.maxmem is not None else spec.memory}\n"
            f'vcpus = {spec.vcpus}\nworkload = "{spec.workload}"'
        )
        return 0
    if not _is_asm(spec.workload):
        return _create(sh, spec, flags, None)  # nothing slow to prepare
    # The spec's own errors first, in create_domain's order and on this thread; then the
    # assembler, on a worker thread (the console and other clients keep going).
    try:
        validate_spec(sh.machine, dataclasses.replace(spec, workload="idle"))
    except DomainError as e:
        sh.eprintln(str(e))
        return ERROR_FAIL
    read = _source_reader(sh.fs, sh.cwd)
    return Pending(lambda: _prepare(spec, read), lambda r: _create(sh, spec, flags, r))


def _is_asm(workload: str) -> bool:
    try:
        return parse_workload(workload).kind == "asm"
    except WorkloadError:
        return False


def _source_reader(fs: Dom0Fs, cwd: str):
    """An `asm:` program's reader: PATH is dom0's, read from dom0's filesystem only. Every
    failure is the one `cannot read` line, so nothing tells what exists on the host."""

    def read(path: str) -> bytes:
        try:
            return fs.read(path, cwd, asm.MAX_SOURCE)
        except FsError as e:
            if e.errno == errno.EFBIG:
                raise asm.AsmError(f"source larger than {asm.MAX_SOURCE >> 10} KiB") from None
            raise asm.SourceError(f"cannot read: {e.strerror}") from None

    return read


def _prepare(spec: DomainSpec, read) -> None:
    """Off the console's thread: parse, fit-check and assemble the workload once (kept in
    `spec.prepared`, which create_domain's checks and the guest builder reuse)."""
    kernel_image()  # assembled once per process; not on the console's thread either
    check_workload(spec, read=read)


def _create(sh, spec: DomainSpec, flags: set[str], prepared: object) -> int:
    """Back on the console's thread once the workload is ready (or failed)."""
    if isinstance(prepared, WorkloadError):
        sh.eprintln(str(prepared))
        return ERROR_FAIL
    if isinstance(prepared, BaseException):
        raise prepared
    try:
        dom = sh.machine.create_domain(spec, paused="-p" in flags)
    except DomainError as e:
        sh.eprintln(str(e))
        return ERROR_FAIL
    if "-c" in flags:
        console = CMD_TABLE.get("console")
        if console is not None:
            return console.fn(sh, [str(dom.domid)])
    return 0


@command(
    "destroy",
    "Terminate a domain immediately",
    "[options] <Domain>\n",
    "-f                      Permit destroying domain 0, which will only succeed\n"
    "                        when run from disaggregated toolstack domain with a\n"
    "                        hardware domain distinct from domain 0.",
    can_dryrun=True,
)
def main_destroy(sh, argv: list[str]) -> int:
    opts, rest = getopts(sh, argv, "f", [], "destroy", 1)
    force = any(o == "-f" for o, _ in opts)
    dom = find_domain(sh, sh.machine, rest[0], "destroy")
    if dom.domid == 0:
        if not force:
            sh.eprintln(
                "Not destroying domain 0; use -f to force.\n"
                "This can only be done when using a disaggregated hardware domain and "
                "toolstack.\n"
            )
            return 1
        # Nothing here could take over from dom0: libxl's destroy fails.
        sh.eprintln("destroy failed (rc=-3)")
        return 1
    try:
        sh.machine.destroy_domain(dom)
    except DomainError:
        sh.eprintln("destroy failed (rc=-3)")
        return 1
    return 0
