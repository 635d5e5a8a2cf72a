"""`xl list`, `xl info`, `xl dmesg`, `xl debug-keys` (tools/xl/xl_info.c, xl_misc.c)."""

from __future__ import annotations

import importlib.util

from emu import version
from keyhandlers import KEY_TABLE
from keyhandlers.dispatch import run_handler
from xenconsole.dom0.libxl_json import list_long
from xenconsole.dom0.xl import command, find_domain, getopts, help_text

DOM0_UNAME = "Linux dom0 6.1.0-27-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 x86_64"
XEN_CAPS = "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 "
SHUTDOWN_REASON_LETTERS = "-rscwS"


def list_header(verbose=False, context=False, cpupool=False, numa=False) -> str:
    head = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    if verbose:
        head += "   UUID                            Reason-Code\tSecurity Label"
    if context and not verbose:
        head += "   Security Label"
    if cpupool:
        head += "         Cpupool"
    if numa:
        head += " NODE Affinity"
    return head


def _reason_code(dom) -> int:
    code = dom.shutdown_code
    if isinstance(code, str):
        return max(0, SHUTDOWN_REASON_LETTERS.find(code))
    return int(code or 0)


def list_row(dom, verbose=False, context=False, cpupool=False, numa=False) -> str:
    """list_domains(): one `xl list` row, with the columns its options add."""
    mem_mb = ((dom.tot_pages * 4) + dom.outstanding_pages * 4) // 1024
    online = len(dom.vcpus)
    row = (
        f"{dom.name:<40} {dom.domid:5d} {mem_mb:5d} {online:5d}     "
        f"{dom.state_chars()}  {dom.cpu_time():8.1f}"
    )
    if verbose:
        row += f" {dom.handle}"
        row += f" {_reason_code(dom):8x}" if dom.shutdown_code is not None else f" {'-':>8}"
    if verbose or context:
        row += f" {'-':>16}"  # no XSM label
    if cpupool:
        row += f"{'Pool-0':>16}"
    if numa:
        row += " all"  # print_bitmap() of a one-node affinity
    return row


@command(
    "list",
    "List information about all/some domains",
    "[options] [Domain]\n",
    "-l, --long              Output all VM details\n"
    "-v, --verbose           Prints out UUIDs and security context\n"
    "-Z, --context           Prints out security context\n"
    "-c, --cpupool           Prints the cpupool the domain is in\n"
    "-n, --numa              Prints out NUMA node affinity",
)
def main_list(sh, argv: list[str]) -> int:
    longopts = ["long", "verbose", "context", "cpupool", "numa"]
    opts, rest = getopts(sh, argv, "lvZcn", longopts, "list", 0)
    machine = sh.machine
    if len(rest) > 1:
        sh.write(help_text("list"))
        return 1
    if rest:
        # An all-digit qualifier is taken as a domid; libxl_domain_info() then fails.
        doms = [find_domain(sh, machine, rest[0], "list")]
    else:
        doms = machine.domain_list()
    if any(o in ("-l", "--long") for o, _ in opts):
        sh.write(list_long(doms))  # xenconsole/dom0/libxl_json.py
        return 0
    flags = {
        name: any(o in (f"-{short}", f"--{name}") for o, _ in opts)
        for short, name in (("v", "verbose"), ("Z", "context"), ("c", "cpupool"), ("n", "numa"))
    }
    sh.println(list_header(**flags))
    for dom in doms:
        sh.println(list_row(dom, **flags))
    return 0


def virt_caps() -> str:
    """xl_info.c:282 over this host's XEN_SYSCTL_physinfo capabilities (xen/arch/x86/
    sysctl.c:98-105, xen/common/sysctl.c:267-283): pv (64-bit PV guests, emu/pv/), hvm
    (SVM) without hap (emu/boot.py: HAP not detected), shadow; no IOMMU (directio), vmtrace
    or vPMU; grant tables up to GNTTAB_MAX_VERSION 2."""
    caps = ["pv"] if importlib.util.find_spec("emu.pv") is not None else []
    return " ".join(caps + ["hvm", "shadow", "gnttab-v1", "gnttab-v2"])


def info_lines(machine) -> list[tuple[str, str]]:
    host = machine.host
    total = machine.total_pages() >> 8
    free = machine.free_pages() >> 8
    return [
        ("host", "dom0"),
        ("release", "6.1.0-27-amd64"),
        ("version", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)"),
        ("machine", "x86_64"),
        ("nr_cpus", str(host.cpus)),
        ("max_cpu_id", str(host.cpus - 1)),
        ("nr_nodes", "1"),
        ("cores_per_socket", str(host.cpus)),
        ("threads_per_core", "1"),
        ("cpu_mhz", "2994.374"),
        ("hw_caps", "178bfbff:f6d8320b:2e500800:000007f7:0000000f:219c07a9:0040069c:00000100"),
        ("virt_caps", virt_caps()),
        ("total_memory", str(total)),
        ("free_memory", str(free)),
        ("sharing_freed_memory", "0"),
        ("sharing_used_memory", "0"),
        ("outstanding_claims", "0"),
        ("free_cpus", "0"),
        ("xen_major", str(version.XEN_MAJOR)),
        ("xen_minor", str(version.XEN_MINOR)),
        ("xen_extra", version.XEN_EXTRA),
        ("xen_version", version.XEN_VERSION),
        ("xen_caps", XEN_CAPS),
        ("xen_scheduler", "credit2"),
        ("xen_pagesize", "4096"),
        ("platform_params", "virt_start=0xffff800000000000"),
        ("xen_changeset", version.XEN_CHANGESET),
        ("xen_commandline", version.xen_commandline(host.dom0_mem)),
        ("cc_compiler", version.XEN_COMPILER),
        ("cc_compile_by", version.XEN_COMPILE_BY),
        ("cc_compile_domain", version.XEN_COMPILE_DOMAIN),
        ("cc_compile_date", version.XEN_COMPILE_DATE),
        ("build_id", version.XEN_BUILD_ID),
        ("xend_config_format", "4"),
    ]


def topology_lines(machine) -> list[str]:
    """`xl info -n`: output_topologyinfo() and output_numainfo() for a one-node host."""
    cpus = machine.host.cpus
    mb = 1 << 8  # pages per MiB
    out = ["cpu_topology           :", "cpu:    core    socket     node"]
    out += [f"{i:3d}:    {i:4d}     {0:4d}     {0:4d}" for i in range(cpus)]
    out += [
        "device topology        :",
        "device           node",
        "No device topology data available",
    ]
    out += ["numa_info              :", "node:    memsize    memfree    distances"]
    total, free = machine.total_pages() // mb, machine.free_pages() // mb
    out.append(f"{0:4d}:    {total:6d}     {free:6d}      10")
    return out


@command(
    "info",
    "Get information about Xen host",
    "-n, --numa         List host NUMA topology information",
)
def main_info(sh, argv: list[str]) -> int:
    opts, rest = getopts(sh, argv, "nx", ["numa", "xenstore"], "info", 0)
    numa = any(o in ("-n", "--numa") for o, _ in opts)
    xs = any(o in ("-x", "--xenstore") for o, _ in opts)
    lines = info_lines(sh.machine)
    xend = lines.pop()  # xend_config_format comes after the optional parts
    if xs:
        lines.append(("xenstore_features", "0x00000000"))
    lines.append(xend)
    info_name = rest[0] if rest and not numa else None
    for key, value in lines:
        if numa and key == "xen_major":
            for text in topology_lines(sh.machine):
                sh.println(text)
        line = f"{key:<23}: {value}"
        if info_name is None:
            sh.println(line)
        elif line.startswith(info_name):
            # maybe_printf(): `xl info NAME` prints only the values of lines starting NAME.
            sh.println(value)
    return 0


@command(
    "dmesg",
    "Read and/or clear dmesg buffer",
    "[-c]",
    "  -c                        Clear dmesg buffer as well as printing it",
)
def main_dmesg(sh, argv: list[str]) -> int:
    opts, _rest = getopts(sh, argv, "c", ["clear"], "dmesg", 0)
    clear = any(o in ("-c", "--clear") for o, _ in opts)
    data = sh.machine.console.ring.read(clear=clear)
    sh.write(data.decode("latin-1"))
    return 0


@command("debug-keys", "Send debug keys to Xen", "<Keys>", can_dryrun=True)
def main_debug_keys(sh, argv: list[str]) -> int:
    _opts, rest = getopts(sh, argv, "", [], "debug-keys", 1)
    keys, args = rest[0], rest[1:]
    machine = sh.machine
    for i, k in enumerate(keys):
        kh = KEY_TABLE.get(k)
        if kh is None:
            continue  # unknown keys are ignored by handle_keypress
        # ARGS go to the last key's handler (docs/contract.md).
        run_handler(machine, kh, args if i == len(keys) - 1 else ())
    return 0
