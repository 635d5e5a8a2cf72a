"""`xl`: the command table and dispatcher (tools/xl/xl.c, xl_cmdtable.c).

Commands live in modules named after xl's own sources (`xl_info`, `xl_mem`, `xl_vcpu`, ...);
each registers itself with `@command(...)`. A command gets the shell and its argv (without
the command name) and returns the exit status. Errors are xl's one-line messages.
"""

from __future__ import annotations

import getopt
import importlib
from collections.abc import Callable
from dataclasses import dataclass


class XlExit(Exception):
    """Leave the command with a status (what xl's `exit()` does)."""

    def __init__(self, status: int) -> None:
        self.status = status


@dataclass(frozen=True)
class CmdSpec:
    name: str
    fn: Callable
    modifies: bool
    can_dryrun: bool
    desc: str
    usage: str
    option: str | None = None


CMD_TABLE: dict[str, CmdSpec] = {}


def command(name, modifies, can_dryrun, desc, usage, option=None):
    def deco(fn):
        CMD_TABLE[name] = CmdSpec(name, fn, modifies, can_dryrun, desc, usage, option)
        return fn

    return deco


def load_commands() -> None:
    """Import every `xl_*` module beside this one; each registers its commands."""
    import pkgutil

    from xenconsole import dom0

    for m in pkgutil.iter_modules(dom0.__path__):
        if m.name.startswith("xl_"):
            importlib.import_module(f"xenconsole.dom0.{m.name}")


def help_text(command_name: str | None = None) -> str:
    """xl.c help(): the full table, or one command's usage."""
    if not command_name or command_name == "help":
        out = ["Usage xl [-vfNtT] <subcommand> [args]\n\n", "xl full list of subcommands:\n\n"]
        for spec in CMD_TABLE.values():
            out.append(f" {spec.name:<19} ")
            if len(spec.name) > 19:
                out.append(f"\n {'':<19} ")
            out.append(f"{spec.desc}\n")
        return "".join(out)
    spec = CMD_TABLE.get(command_name)
    if spec is None:
        return f'command "{command_name}" not implemented\n'
    text = (
        f"Usage: xl [-vtT{'f' if spec.modifies else ''}{'N' if spec.can_dryrun else ''}] "
        f"{spec.name} {spec.usage}\n\n{spec.desc}.\n\n"
    )
    if spec.option:
        text += f"Options:\n\n{spec.option}\n"
    return text


def getopts(sh, argv: list[str], optstring: str, longopts: list[str], helpstr: str, reqargs: int):
    """def_getopt(): parse options; too few arguments or a bad option end the command."""
    try:
        opts, rest = getopt.getopt(argv, optstring + "h", longopts + ["help"])
    except getopt.GetoptError as e:
        sh.println(f"option `{e.opt[:1] or '?'}' not supported.")
        raise XlExit(2) from None
    if any(o in ("-h", "--help") for o, _ in opts):
        sh.write(help_text(helpstr))
        raise XlExit(0)
    if len(rest) < reqargs:
        plural = "s" if reqargs > 1 else ""
        sh.println(f"'xl {helpstr}' requires at least {reqargs} argument{plural}.")
        raise XlExit(2)
    return opts, rest


def find_domain(sh, machine, qualifier: str):
    """find_domain(): a domid (all digits) or a name; xl's error otherwise."""
    if qualifier.isdigit():
        domid = int(qualifier)
        dom = machine.domains.get(domid)
    else:
        dom = next((d for d in machine.domains.values() if d.name == qualifier), None)
    if dom is None:
        sh.println(f"{qualifier} is an invalid domain identifier (rc=-6)")
        raise XlExit(1)
    return dom


def main(sh, argv: list[str]) -> int:
    if not CMD_TABLE:
        load_commands()
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = argv[1:]  # global -v -f -N -t -T are accepted and ignored
    if not argv:
        sh.write(help_text())
        return 0
    name, args = argv[0], argv[1:]
    if name in ("help", "-h", "--help"):
        sh.write(help_text(args[0] if args else None))
        return 0
    spec = CMD_TABLE.get(name)
    if spec is None:
        sh.println("command not implemented")
        return 1
    try:
        return spec.fn(sh, args)
    except XlExit as e:
        return e.status
