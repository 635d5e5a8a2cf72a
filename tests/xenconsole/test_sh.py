"""The dom0 shell's language (xenconsole/dom0/sh.py): what labgrid's ShellDriver sends."""

from __future__ import annotations

import re

import pytest

from tests.shell_host import Host, P

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


# ---- a slow command inside a line waits off the console's thread ---------------------------
# `xl create` of an `asm:` guest is a Pending (its assembler runs on a worker thread); in a
# shell-language line the rest of the line runs after it, in order, as on the plain path.

SAY_HI = "    mov al, 0x68\n    out 0xe9, al\nhang:\n    sti\n    hlt\n    jmp hang\n"


class ManualRunner:
    """A runner the test fires by hand: what deferToThread does, minus the thread."""

    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def __call__(self, fn):
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.jobs.append((fn, d))
        return d

    def finish(self) -> None:
        fn, d = self.jobs.pop(0)
        try:
            d.callback(fn())
        except Exception as e:
            d.errback(e)


@pytest.fixture
def waiting(host: Host, tmp_path):
    """The shell with a hand-fired runner, and a config file per guest name."""
    (tmp_path / "hi.S").write_text(SAY_HI)
    (tmp_path / "bad.S").write_text("a::")

    def cfg(name: str, prog: str = "hi.S") -> str:
        p = tmp_path / f"{name}.cfg"
        p.write_text(f'name = "{name}"\nmemory = 4\nworkload = "asm:{tmp_path / prog}"\n')
        return str(p)

    host.shell.runner = runner = ManualRunner()
    try:
        yield runner, cfg
    finally:
        host.shell.runner = None
        for d in list(host.machine.domains.values()):
            if d.domid != 0:
                host.machine.destroy_domain(d)


def shell_out(host: Host) -> bytes:
    """What the shell printed, without the lines Xen prints for a new domain meanwhile."""
    return re.sub(rb"\(XEN\) [^\r]*\r\n", b"", bytes(host.out))


def names(host: Host) -> set[str]:
    return {d.name for d in host.machine.domains.values()}


@pytest.mark.timeout(60)
def test_a_list_waits_for_its_slow_command_then_runs_the_rest(host: Host, waiting) -> None:
    runner, cfg = waiting
    line = f"xl create -q {cfg('w1')} && echo made-$?; echo after"
    assert host.type(line.encode() + b"\r") == line.encode() + b"\r\n"  # no prompt yet
    assert len(runner.jobs) == 1 and host.shell.waiting is not None
    assert "w1" not in names(host)
    assert host.type(b"echo typed\r") == b""  # held while the line waits, as a tty holds it
    host.out.clear()
    runner.finish()
    assert shell_out(host) == b"made-0\r\nafter\r\n" + P + b"echo typed\r\ntyped\r\n" + P
    assert "w1" in names(host) and host.shell.waiting is None


@pytest.mark.timeout(60)
def test_two_slow_commands_of_one_line_wait_in_turn(host: Host, waiting) -> None:
    runner, cfg = waiting
    line = f"f() {{ xl create -q $1 || echo failed-$?; }}; f {cfg('w2', 'bad.S')}; f {cfg('w3')}"
    assert host.type(line.encode() + b"\r") == line.encode() + b"\r\n"
    host.out.clear()
    runner.finish()  # the first: an assembler error, then the second waits
    prog = cfg("w2", "bad.S").replace("w2.cfg", "bad.S")
    first = f"workload: asm: {prog}: line 1: junk at end of line, first unrecognized "
    first += "character is `:'\r\nfailed-3\r\n"
    assert shell_out(host).decode() == first
    assert len(runner.jobs) == 1 and host.shell.waiting is not None
    host.out.clear()
    runner.finish()
    assert shell_out(host) == P
    assert "w3" in names(host) and "w2" not in names(host)
    assert host.cmd("echo $?") == "0\r\n"


@pytest.mark.timeout(60)
def test_ctrl_c_while_a_line_waits_ends_the_whole_line(host: Host, waiting) -> None:
    runner, cfg = waiting
    line = f"g() {{ xl create -q {cfg('w4')}; echo not-reached; }}; V=1 g; echo not-either"
    host.type(line.encode() + b"\r")
    assert host.type(b"\x03") == b"^C\r\n" + P
    host.out.clear()
    runner.finish()  # the abandoned work's result is dropped, and the rest never runs
    assert bytes(host.out) == b"" and "w4" not in names(host)
    assert host.cmd("echo $? [$V]") == "130 []\r\n"  # V was g's only: restored
    assert host.shell.sh_state.depth == 0 and host.shell.sh_state.positional == []


@pytest.mark.timeout(60)
def test_the_rest_of_a_list_waits_for_xl_console_to_return(host: Host, waiting) -> None:
    _runner, _cfg = waiting
    made = host.cmd("""xl create -q /dev/null 'name="idler"' memory=4 'workload="idle"'""")
    assert re.sub(r"\(XEN\) [^\r]*\r\n", "", made) == ""
    line = "xl console idler && echo back-$?; echo done"
    assert host.type(line.encode() + b"\r") == line.encode() + b"\r\n"  # the guest's console
    assert host.shell.foreground is not None
    assert host.type(b"\x1d") == b"back-0\r\ndone\r\n" + P  # Ctrl-]: the rest of the line
    assert host.shell.foreground is None
