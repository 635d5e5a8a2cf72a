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


def command(
    name: str,
    desc: str,
    usage: str,
    option: str | None = None,
    *,
    modifies: bool = False,
    can_dryrun: bool = False,
) -> Callable[[Callable], Callable]:
    """Register an `xl` command. `modifies` and `can_dryrun` are xl_cmdtable.c's two flags:
    the command accepts `xl -f` (force) and `xl -N` (dry run)."""

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


# tools/xl/xl_cmdtable.c order: `xl help` lists commands in it, and a command may be
# abbreviated to a prefix that is unique among all of xl's commands, not only ours.
XEN_CMD_ORDER = (
    "create config-update list destroy shutdown reboot pci-attach pci-detach pci-list "
    "pci-assignable-add pci-assignable-remove pci-assignable-list pause unpause console "
    "vncviewer save migrate restore migrate-receive suspend resume dump-core cd-insert "
    "cd-eject mem-max mem-set button-press vcpu-list vcpu-pin vcpu-set vm-list info sharing "
    "sched-credit sched-credit2 sched-rtds domid domname rename trigger sysrq debug-keys "
    "set-parameters dmesg top network-attach network-list network-detach channel-list "
    "block-attach block-list block-detach vtpm-attach vtpm-list vtpm-detach vkb-attach "
    "vkb-list vkb-detach vdispl-attach vdispl-list vdispl-detach vsnd-attach vsnd-list "
    "vsnd-detach uptime claims cpupool-create cpupool-list cpupool-destroy cpupool-rename "
    "cpupool-cpu-add cpupool-cpu-remove cpupool-migrate cpupool-numa-split getenforce "
    "setenforce loadpolicy remus devd psr-hwinfo psr-cmt-attach psr-cmt-detach psr-cmt-show "
    "psr-cat-set psr-cat-show psr-mba-set psr-mba-show usbctrl-attach usbctrl-detach "
    "usbdev-attach usbdev-detach usb-list qemu-monitor-command dt-overlay xenstore-quota-get "
    "xenstore-quota-set"
).split()


def _ordered() -> list[CmdSpec]:
    rank = {name: i for i, name in enumerate(XEN_CMD_ORDER)}
    return sorted(CMD_TABLE.values(), key=lambda c: (rank.get(c.name, len(rank)), c.name))


def lookup(name: str | None) -> CmdSpec | None:
    """cmdtable_lookup(): an exact name, or a prefix of exactly one command."""
    if not CMD_TABLE:
        load_commands()
    if not name:
        return None
    if name in CMD_TABLE:
        return CMD_TABLE[name]
    names = set(XEN_CMD_ORDER) | set(CMD_TABLE)
    hits = [n for n in names if n.startswith(name)]
    return CMD_TABLE.get(hits[0]) if len(hits) == 1 else None


def help_text(command_name: str | None = None) -> str:
    """xl.c help(): the full table, or one command's usage."""
    if not command_name or command_name == "help":
        out = ["Usage xl [-vfNtT] <subcommand> [args]\n\n", "xl full list of subcommands:\n\n"]
        for spec in _ordered():
            out.append(f" {spec.name:<19} ")
            if len(spec.name) > 19:
                out.append(f"\n {'':<19} ")
            out.append(f"{spec.desc}\n")
        return "".join(out)
    spec = lookup(command_name)
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
    """def_getopt(): GNU getopt_long (options may follow operands); `-h`/`--help` print the
    command's help; a bad option or too few operands end the command with xl's messages."""
    try:
        opts, rest = getopt.gnu_getopt(argv, optstring + "h", longopts + ["help"])
    except getopt.GetoptError as e:
        # glibc leaves optopt at 0 for an unknown long option, so xl prints no letter.
        short = e.opt if len(e.opt) == 1 and not e.msg.startswith("option --") else ""
        sh.eprintln(f"option `{short}' not supported.")
        raise XlExit(2) from None
    if any(o in ("-h", "--help") for o, _ in opts):
        sh.write(help_text(helpstr))
        raise XlExit(0)
    if len(rest) < reqargs:
        plural = "s" if reqargs > 1 else ""
        sh.eprintln(f"'xl {helpstr}' requires at least {reqargs} argument{plural}.\n")
        sh.write(help_text(helpstr))
        raise XlExit(2)
    return opts, rest


DOMID_FIRST_RESERVED = 0x7FF0  # xen/include/public/xen.h
_NO_DOMINFO = "libxl_dom.c:37:libxl__domain_type: {d}unable to get dominfo: No such process"

# What xl prints for an all-digit qualifier that names no domain. find_domain() takes any
# number as a domid (tools/libs/light/libxl_utils.c:95-101); the command's first libxl call
# then fails: XEN_DOMCTL_getdomaininfo or _pausedomain returns -ESRCH (xen/common/domctl.c:371).
# libxl lines are FILE:LINE:FUNCTION of the LOG call (libxl_internal.c:241). xl's own last
# line and exit status: xl_vmcontrol.c:94, :75 and :80 (pause and unpause ignore libxl's
# answer), xl_console.c:59, xl_info.c:688-690 (`list`).
NO_SUCH_DOMAIN: dict[str, tuple[tuple[str, ...], str | None, int]] = {
    "destroy": (
        (
            "libxl_domain.c:356:libxl_domain_info: {d}Getting domain info: No such process",
            "libxl_domain.c:1181:libxl__destroy_domid: {d}Non-existant domain",
            "libxl_domain.c:1135:domain_destroy_callback: {d}Unable to destroy guest",
            "libxl_domain.c:1062:domain_destroy_cb: {d}Destruction of domain failed",
        ),
        "destroy failed (rc=-21)",  # ERROR_DOMAIN_NOTFOUND
        1,
    ),
    "pause": (
        ("libxl_domain.c:585:libxl_domain_pause: {d}Pausing domain: No such process",),
        None,
        0,
    ),
    "unpause": ((_NO_DOMINFO,), None, 0),
    "list": (
        ("libxl_domain.c:356:libxl_domain_info: {d}Getting domain info: No such process",),
        "Error: Domain '{q}' does not exist.",
        1,
    ),
    "console": ((_NO_DOMINFO,), "Unable to attach console", 1),
}


def find_domain(sh, machine, qualifier: str, command: str | None = None):
    """find_domain(): a domid (all digits) or a name; xl's error otherwise. For a number that
    names no domain, `command`'s libxl errors (NO_SUCH_DOMAIN) when it is one listed there."""
    if qualifier.isdigit():
        # strtoul() into a uint32_t (libxl_utils.c:100)
        domid = min(int(qualifier), (1 << 64) - 1) & 0xFFFFFFFF
        dom = machine.domains.get(domid)
        if dom is None and command in NO_SUCH_DOMAIN:
            lines, last, status = NO_SUCH_DOMAIN[command]
            # libxl_internal.c:238: "Domain %u:" only for a valid guest domid
            prefix = f"Domain {domid}:" if 0 < domid < DOMID_FIRST_RESERVED else ""
            for line in lines:
                sh.eprintln("libxl: error: " + line.format(d=prefix))
            if last is not None:
                sh.eprintln(last.format(q=qualifier))
            raise XlExit(status)
    else:
        dom = next((d for d in machine.domains.values() if d.name == qualifier), None)
    if dom is None:
        sh.eprintln(f"{qualifier} is an invalid domain identifier (rc=-6)")
        raise XlExit(1)
    return dom


GLOBAL_OPTS = "vftTN"


def main(sh, argv: list[str]) -> int:
    """xl.c main(): global options, then the command (or `help`)."""
    if not CMD_TABLE:
        load_commands()
    dryrun = False
    while argv and argv[0].startswith("-") and argv[0] != "-":
        arg, argv = argv[0], argv[1:]
        if arg == "--":
            break
        for ch in arg[1:]:
            if ch not in GLOBAL_OPTS:
                # getopt's own complaint, then xl's.
                if arg.startswith("--"):
                    sh.eprintln(f"xl: unrecognized option '{arg}'")
                else:
                    sh.eprintln(f"xl: invalid option -- '{ch}'")
                sh.eprintln("unknown global option")
                return 1
            dryrun = dryrun or ch == "N"  # -v -f -t -T change nothing visible here
    if not argv:
        sh.write(help_text())
        return 1
    name, args = argv[0], argv[1:]
    spec = lookup(name)
    if spec is None:
        if name == "help":
            sh.write(help_text(args[0] if args else None))
            return 0
        sh.eprintln("command not implemented")
        return 1
    if dryrun and not spec.can_dryrun:
        sh.eprintln("command does not implement -N (dryrun) option")
        return 1
    try:
        return spec.fn(sh, args)
    except XlExit as e:
        return e.status
