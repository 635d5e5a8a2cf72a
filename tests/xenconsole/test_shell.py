"""The dom0 shell and `xl`, driven byte by byte through the real console input path.

A real machine is booted in-process (no network): bytes enter through `Console.serial_rx`,
exactly as a client's keystrokes do, and the test sees the exact serial output bytes.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shell_host import Host, P

from emu.boot import version_lines
from emu.machine import Machine
from keyhandlers import installed
from xenconsole.dom0 import xl

FIXTURE = HealthCheck.function_scoped_fixture
XL_INFO_KEYS = [
    # tools/xl/xl_info.c print_info(): output_nodeinfo, output_physinfo, output_xeninfo.
    "host", "release", "version", "machine", "nr_cpus", "max_cpu_id", "nr_nodes",
    "cores_per_socket", "threads_per_core", "cpu_mhz", "hw_caps", "virt_caps",
    "total_memory", "free_memory", "sharing_freed_memory", "sharing_used_memory",
    "outstanding_claims", "free_cpus", "xen_major", "xen_minor", "xen_extra", "xen_version",
    "xen_caps", "xen_scheduler", "xen_pagesize", "platform_params", "xen_changeset",
    "xen_commandline", "cc_compiler", "cc_compile_by", "cc_compile_domain", "cc_compile_date",
    "build_id", "xend_config_format",
]  # fmt: skip


@pytest.fixture
def host():
    h = Host()
    yield h
    h.machine.shutdown()


def test_prompt_after_boot(host):
    assert host.shell.ready
    assert host.machine.console.console_rx == 1  # input went to DOM0 at the end of boot
    assert host.type(b"") == b""
    assert host.type(b"\r") == b"\r\n" + P


def test_echo_and_backspace(host):
    assert host.type(b"echo") == b"echo"
    assert host.type(b"X\x7f") == b"X\b \b"
    assert host.type(b"\x08") == b"\b \b"  # BS works like DEL
    # The line is now "ech": an unknown command.
    assert host.type(b" hi\r") == b" hi\r\n-bash: ech: command not found\r\n" + P


def test_backspace_on_empty_line_prints_nothing(host):
    assert host.type(b"\x7f\x7f\x08") == b""


def test_ctrl_c_abandons_line(host):
    assert host.type(b"xl destroy 0") == b"xl destroy 0"
    assert host.type(b"\x03") == b"^C\r\n" + P
    assert host.status() == 130
    assert host.type(b"\x03") == b"^C\r\n" + P  # on an empty line too


def test_ctrl_u_erases_line(host):
    host.type(b"abc")
    assert host.type(b"\x15") == b"\b \b" * 3
    assert host.type(b"\r") == b"\r\n" + P  # nothing ran
    assert host.type(b"\x15") == b""


def test_cr_lf_is_one_enter(host):
    assert host.type(b"echo hi\r\n") == b"echo hi\r\nhi\r\n" + P
    # Split across two reads (another client, or minutes later): two Enters (issue 13).
    assert host.type(b"echo ho\r") == b"echo ho\r\nho\r\n" + P
    assert host.type(b"\n") == b"\r\n" + P
    # A lone LF is an Enter; CR CR is two.
    assert host.type(b"\n") == b"\r\n" + P
    assert host.type(b"\r\r") == (b"\r\n" + P) * 2


def test_escape_sequences_are_swallowed(host):
    assert host.type(b"\x1b[A\x1b[D\x1bOB") == b""
    assert host.cmd("true") == ""


def test_unknown_command(host):
    assert host.cmd("foo") == "-bash: foo: command not found\r\n"
    assert host.status() == 127
    assert host.status() == 0  # `echo` itself succeeded


def test_status_of_builtins_and_semicolons(host):
    assert host.cmd("false; echo $?") == "1\r\n"
    assert host.cmd("true; echo $?") == "0\r\n"


def test_xl_help(host):
    out = host.cmd("xl help").replace("\r\n", "\n")
    head = "Usage xl [-vfNtT] <subcommand> [args]\n\nxl full list of subcommands:\n\n"
    assert out.startswith(head)
    rows = out[len(head) :].splitlines()
    names = [r.split()[0] for r in rows]
    assert {"list", "info", "debug-keys", "dmesg"} <= set(names)
    assert len(names) == len(xl.CMD_TABLE)
    rank = {n: i for i, n in enumerate(xl.XEN_CMD_ORDER)}
    assert names == sorted(names, key=lambda n: rank.get(n, len(rank)))  # xl_cmdtable.c order
    assert " list                List information about all/some domains" in rows
    assert " debug-keys          Send debug keys to Xen" in rows
    assert host.status() == 0


def test_xl_help_list(host):
    out = host.cmd("xl help list").replace("\r\n", "\n")
    assert out == (
        "Usage: xl [-vtT] list [options] [Domain]\n\n\n"
        "List information about all/some domains.\n\n"
        "Options:\n\n"
        "-l, --long              Output all VM details\n"
        "-v, --verbose           Prints out UUIDs and security context\n"
        "-Z, --context           Prints out security context\n"
        "-c, --cpupool           Prints the cpupool the domain is in\n"
        "-n, --numa              Prints out NUMA node affinity\n"
    )
    assert host.cmd("xl list -h") == host.cmd("xl help list")
    assert host.cmd("xl help debug-keys").replace("\r\n", "\n") == (
        "Usage: xl [-vtTN] debug-keys <Keys>\n\nSend debug keys to Xen.\n\n"
    )
    assert host.cmd("xl help foo") == 'command "foo" not implemented\r\n'


def test_xl_list(host):
    lines = host.cmd("xl list").split("\r\n")
    assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    assert lines[0].count("\t") == 2
    dom0 = host.machine.domains[0]
    mem = dom0.tot_pages * 4 // 1024
    assert mem == 128
    row = re.fullmatch(
        r"(.{40}) (.{5}) (.{5}) (.{5})     ([r-][b-][p-][s-][-rscwS][d-])  (.{8})", lines[1]
    )
    assert row, lines[1]
    assert row.groups()[:4] == (f"{'Domain-0':<40}", "    0", f"{mem:5d}", "    2")
    assert re.fullmatch(r" *\d+\.\d", row.group(6))
    assert lines[2:] == [""]
    assert host.cmd("xl list Domain-0").split("\r\n")[1] == lines[1]
    assert host.cmd("xl list 0").split("\r\n")[1] == lines[1]
    assert host.cmd("xl li").split("\r\n")[0] == lines[0]  # unique prefix, as xl allows


def test_xl_info_keys_in_order(host):
    lines = host.cmd("xl info").split("\r\n")[:-1]
    keys = [ln[:23].rstrip() for ln in lines]
    assert keys == XL_INFO_KEYS
    assert all(ln[23:25] == ": " for ln in lines)
    info = {ln[:23].rstrip(): ln[25:] for ln in lines}
    assert info["xen_version"] == "4.22.0"
    assert info["nr_cpus"] == "2"
    assert info["xen_pagesize"] == "4096"
    assert info["xend_config_format"] == "4"
    assert info["xen_caps"].endswith(" ")
    total, free = int(info["total_memory"]), int(info["free_memory"])
    assert free <= total - 128
    assert total == host.machine.total_pages() >> 8
    assert host.cmd("xl info free_memory") == f"{free}\r\n"  # maybe_printf() filter
    numa = host.cmd("xl info -n").split("\r\n")
    assert "cpu:    core    socket     node" in numa
    assert numa.index("cpu_topology           :") == XL_INFO_KEYS.index("xen_major")


def test_debug_keys_then_dmesg(host):
    out = host.cmd("xl debug-keys h")
    want = ["(XEN) 'h' pressed -> showing installed handlers"]
    want += [f"(XEN) {ln}" for ln in version_lines(Machine)]  # keyhandler.c:133
    want += [
        f"(XEN)  key '{kh.key}' (ascii '{ord(kh.key):02x}') => {kh.desc}" for kh in installed()
    ]
    assert out.split("\r\n")[:-1] == want  # printk goes to the serial line too
    dmesg = host.cmd("xl dmesg")
    assert "\r\n".join(want) + "\r\n" in dmesg
    assert "xl debug-keys" not in dmesg  # dom0's own output is not in the ring
    assert host.cmd("xl debug-keys hh").count(want[0]) == 2


def test_dmesg_clear(host):
    first = host.cmd("xl dmesg -c")
    assert "(XEN) Xen version 4.22.0" in first
    assert host.cmd("xl dmesg") == ""
    host.cmd("xl debug-keys h")
    again = host.cmd("xl dmesg")
    assert again.startswith("(XEN) 'h' pressed -> showing installed handlers\r\n")
    assert "Bootloader:" not in again  # the boot log went with -c (h prints the version)
    assert host.cmd("xl dmesg --clear") == again
    assert host.cmd("xl dmesg") == ""


@pytest.mark.parametrize(
    "line, out, status",
    [
        ("xl debug-keys", "'xl debug-keys' requires at least 1 argument.\r\n", 2),
        ("xl list -z", "option `z' not supported.\r\n", 2),
        ("xl dmesg -x", "option `x' not supported.\r\n", 2),
        ("xl list --bogus", "option `' not supported.\r\n", 2),
        ("xl foo", "command not implemented\r\n", 1),
        ("xl d", "command not implemented\r\n", 1),  # ambiguous: destroy, debug-keys, ...
        ("xl list foo", "foo is an invalid domain identifier (rc=-6)\r\n", 1),
        (
            # libxl_domain.c:356, then xl_info.c:688-690
            "xl list 7",
            "libxl: error: libxl_domain.c:356:libxl_domain_info: Domain 7:Getting domain info: "
            "No such process\r\nError: Domain '7' does not exist.\r\n",
            1,
        ),
        ("xl -N info", "command does not implement -N (dryrun) option\r\n", 1),
        ("xl -z list", "xl: invalid option -- 'z'\r\nunknown global option\r\n", 1),
    ],
)
def test_xl_errors(host, line, out, status):
    usage = host.cmd("xl help debug-keys")
    got = host.cmd(line)
    if "requires at least" in out:
        # xl follows that line with a blank line and the command's help, as def_getopt does.
        assert got == out + "\r\n" + usage
    else:
        assert got == out
    assert host.status() == status


def test_xl_without_command_prints_help_and_fails(host):
    assert host.cmd("xl") == host.cmd("xl help")
    host.cmd("xl")
    assert host.status() == 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200))
def test_any_bytes_leave_the_shell_working(host, data):
    # Any bytes (Ctrl-A runs included) keep the console alive and never show a traceback.
    raw = host.type(data)
    assert b"Traceback" not in raw and b"internal error" not in raw
    # Get back to a clean dom0 prompt, whatever the bytes did: Ctrl-C flushes a pending
    # Ctrl-A count and ends a half-typed line (or Xen's args prompt).
    host.type(b"\x03")
    if host.machine.console.console_rx != 1:
        host.type(b"\x01\x01\x01\x03")
    assert host.cmd("echo ok") == "ok\r\n"


_WORDS = ["xl", "list", "info", "dmesg", "debug-keys", "help", "-c", "-l", "-n", "-x", "-N",
          "-h", "--help", "--long", "Domain-0", "0", "99", "h", "w", "+", "-", "''", '"', "$?",
          ";", "foo", "--", "-"]  # fmt: skip


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(words=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=6))
def test_any_xl_arguments_give_no_traceback(host, words):
    line = "xl " + " ".join(words)
    raw = host.type(line.encode() + b"\r")
    assert b"Traceback" not in raw and b"internal error" not in raw
    assert raw.endswith(P)


def test_xl_list_option_columns(host):
    base = host.cmd("xl list").split("\r\n")
    v = host.cmd("xl list -v").split("\r\n")
    assert v[0] == base[0] + "   UUID                            Reason-Code\tSecurity Label"
    uuid = host.machine.domains[0].handle
    assert v[1] == base[1] + f" {uuid}" + " " * 8 + "-" + " " * 16 + "-"
    z = host.cmd("xl list -Z").split("\r\n")
    assert z[:2] == [base[0] + "   Security Label", base[1] + " " * 16 + "-"]
    cn = host.cmd("xl list -c -n").split("\r\n")
    assert cn[:2] == [base[0] + "         Cpupool NODE Affinity", base[1] + "          Pool-0 all"]


def test_an_over_long_line_rings_the_bell_once(host):
    """Issue 15, finding 9: 10 MB without a newline rang 10 MB of BEL to every client; the
    bell rings once per overflowed line, as a line editor does."""
    from xenconsole.dom0.shell import MAX_LINE

    out = host.type(b"x" * (MAX_LINE + 1000))
    assert out.count(b"\x07") == 1 and out.count(b"x") == MAX_LINE
    assert host.type(b"\x08yz").count(b"\x07") == 1  # room for one: y echoed, z rings again
    host.type(b"\x15")
    assert host.type(b"echo ok\r") == b"echo ok\r\nok\r\n" + P


def test_the_rest_of_the_line_waits_for_xl_console_to_return(host):
    """Issue 15, finding 9: `xl create -c ...; echo AFTER$?` printed AFTER0 while the console
    was attached; the rest of the line runs when Ctrl-] returns, as in bash."""
    out = host.type(b"xl create -c /dev/null 'name=\"t\"' memory=16; echo AFTER$?\r")
    assert b"AFTER0" not in out and not out.endswith(P)
    assert host.type(b"\x1d") == b"AFTER0\r\n" + P
