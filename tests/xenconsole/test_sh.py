"""The dom0 shell's language (xenconsole/dom0/sh.py): what labgrid's ShellDriver sends."""

from __future__ import annotations

import pytest

from tests.shell_host import Host

# labgrid 26's ShellDriver (labgrid/driver/shelldriver.py, _inject_run and _run), verbatim.
RUN_FN = """run() { echo -n "$MARKER"; sh -c "$@"; echo "$MARKER $?"; }"""


@pytest.fixture(scope="module")
def host() -> Host:
    return Host()


def out(host: Host, line: str) -> str:
    return host.cmd(line).replace("\r\n", "\n")


@pytest.mark.timeout(60)
def test_lists_and_status(host: Host) -> None:
    assert out(host, "true && echo yes || echo no") == "yes\n"
    assert out(host, "false && echo yes || echo no") == "no\n"
    assert out(host, "false; echo $?") == "1\n"
    assert out(host, "false || false; echo st=$?") == "st=1\n"
    assert out(host, "true&&echo a;echo b") == "a\nb\n"
    assert out(host, "{ echo in; false; }; echo $?") == "in\n1\n"


@pytest.mark.timeout(60)
def test_variables_and_quoting(host: Host) -> None:
    assert out(host, "A=1; B='two words'; echo $A \"$B\" '$A' ${A}x") == "1 two words $A 1x\n"
    assert out(host, 'X="a  b"; echo $X; echo "$X"') == "a b\na  b\n"
    assert out(host, "echo 'ab''cd' \"e\\\"f\" g\\ h") == 'abcd e"f g h\n'
    assert out(host, "Y=tmp echo $Y; echo [$Y]") == "\n[]\n"  # a prefix is the command's


@pytest.mark.timeout(60)
def test_sh_c_and_environment(host: Host) -> None:
    assert out(host, "sh -c 'echo $0 $1 $#' me x y") == "me x 2\n"
    assert out(host, "Z=1; sh -c 'echo [$Z]'") == "[]\n"
    assert out(host, "export Z=2; sh -c 'echo [$Z]'") == "[2]\n"
    assert out(host, "W=3 sh -c 'echo [$W]'") == "[3]\n"
    assert out(host, "sh -c 'exit_status_of_this_is_127'; echo $?").endswith("\n127\n")


@pytest.mark.timeout(60)
def test_labgrid_marker_protocol(host: Host) -> None:
    assert host.cmd(RUN_FN) == ""
    got = host.cmd("MARKER='abcd''efgh' run 'xl list'")
    assert got.startswith("abcdefghName ")
    assert got.endswith("\r\nabcdefgh 0\r\n")
    lines = got[len("abcdefgh") : -len("abcdefgh 0\r\n")].split("\r\n")
    assert lines[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    assert lines[1].startswith("Domain-0 ")
    assert host.cmd("MARKER='abcd''efgh' run 'false'") == "abcdefghabcdefgh 1\r\n"
    assert host.cmd("MARKER=M run 'xl nonsense'").endswith("M 1\r\n")


@pytest.mark.timeout(60)
def test_errors_are_one_line(host: Host) -> None:
    assert out(host, "A=1; echo $A | cat") == "-bash: |: not supported by this shell\n"
    assert out(host, "true &&") == "-bash: syntax error: unexpected end of file\n"
    assert (
        out(host, "true && echo 'open") == "-bash: unexpected EOF while looking for matching `''\n"
    )
    assert host.status() == 2
    assert out(host, "f() { f; }; f").endswith("maximum nesting level exceeded (64)\n")
