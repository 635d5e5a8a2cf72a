"""The guest-program assembler (emu/asm.py) and its path from `xl create` (issue 15
findings 1-4, 9's non-ASCII byte, 10; issue 9's "assembled once" and import cycle).

In process: emu.asm against hostile sources, the workload check and the guest builder on a
real machine, and the dom0 shell's wait for a Pending command. tests/test_asm_e2e.py drives
the same sources through a real console server.
"""

from __future__ import annotations

import ast
import os
import resource
from pathlib import Path

import pytest
from guest_helpers import console_lines, create, wait_for
from twisted.internet.defer import Deferred

from emu import asm
from emu import workload as W
from emu.domctl import DomainError
from emu.host import DomainSpec
from xenconsole.dom0.fs import Dom0Fs
from xenconsole.dom0.shell import PROMPT, Dom0Shell

pytestmark = [pytest.mark.timeout(120), pytest.mark.machine(memory=256 << 20, shared=True)]

CANARY = "XENCONSOLE-CANARY-7f3a9c"
HANGERS = [b"a::", b"1.2 b", b"a:*:1"]  # keystone 0.9.2 looped forever on each
SEGFAULTER = b".text\nmain:\n pop rax\n.rodata\n.byte 0x99, 0x99\n"  # keystone: SIGSEGV
SAY_HI = "    mov al, 0x68\n    out 0xe9, al\n    mov al, 0x0a\n    out 0xe9, al\nhang:\n    sti\n"
SAY_HI += "    hlt\n    jmp hang\n"
LIMIT = W.USER_PAGES << 12


def user(src: bytes | str) -> bytes:
    return asm.assemble(src, W.USER_ENTRY, LIMIT)


def refused(src: bytes | str) -> str:
    with pytest.raises(asm.AsmError) as e:
        user(src)
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg and msg.isprintable(), msg
    return msg


def incbin_source(path: str) -> str:
    return (
        "    lea rbx, [rip + data]\nshow:\n    mov al, byte ptr [rbx]\n    test al, al\n"
        "    jz done\n    out 0xe9, al\n    inc rbx\n    jmp show\ndone:\n    hlt\n"
        f'data: .incbin "{path}"\n    .byte 0\n'
    )


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    p = tmp_path / "canary.txt"
    p.write_text(CANARY + "\n")
    return p


# ---- finding 1: .incbin of a host file -----------------------------------------------------


def test_incbin_refused_and_never_printed(machine, tmp_path, canary):
    msg = refused(incbin_source(str(canary)))
    assert msg == "line 11: .incbin is not allowed: a guest program cannot read files"
    # The same line for a path that does not exist: nothing is learnt about the host.
    assert refused(incbin_source(str(tmp_path / "no-such-file"))) == msg
    prog = tmp_path / "leak.S"
    prog.write_text(incbin_source(str(canary)))
    before = machine.heap.total_avail_pages
    with pytest.raises(DomainError) as e:
        create(machine, "leak", f"asm:{prog}", memory=4)
    assert str(e.value) == f"workload: asm: {prog}: {msg}"
    assert CANARY not in str(e.value)
    assert machine.heap.total_avail_pages == before
    assert all(d.name != "leak" for d in machine.domains.values())


@pytest.mark.parametrize(
    "src,line,word",
    [
        ('.INCBIN "/etc/passwd"', 1, "incbin"),
        ('nop\n  .include "/etc/passwd"', 2, "include"),
        ('x: .incbin"/etc/passwd",0,4', 1, "incbin"),
        ("# .incbin in a comment is refused too\nnop", 1, "incbin"),
        ('.macro m a\n.\\a "/etc/passwd"\n.endm\nm incbin', 1, "macro"),
        ('.irp d,inc\n.\\d\\()bin "/etc/passwd"\n.endr', 1, "irp"),
        (".irpc c,x\nnop\n.endr", 1, "irpc"),
        (".mri 1\n", 1, "mri"),
        (".altmacro\n", 1, "altmacro"),
    ],
)
def test_file_directives_and_macro_facilities_refused(src, line, word):
    msg = refused(src)
    assert msg.startswith(f"line {line}: .{word} is not allowed"), msg


def test_incbin_in_a_name_is_not_a_directive():
    assert user("myincbinx: nop\nincluded: nop\n") == b"\x90\x90"


# ---- findings 2, 3: inputs that hung or crashed keystone -----------------------------------


@pytest.mark.parametrize("src", [*HANGERS, SEGFAULTER], ids=["a::", "1.2 b", "a:*:1", "segv"])
def test_hangers_and_segfaulter_give_one_error_line(src):
    msg = refused(src)
    assert msg.startswith(("line 1: junk at end of line", "line 4: unknown pseudo-op: `.rodata'"))


def test_etc_hosts_as_a_program_gives_one_line_without_its_text(machine):
    with pytest.raises(DomainError) as e:
        create(machine, "hosts", "asm:/etc/hosts", memory=4)
    msg = str(e.value)
    assert msg.startswith("workload: asm: /etc/hosts: line ") and "\n" not in msg
    assert "localhost" not in msg  # gas quotes source text back; it is elided


def test_error_lines_never_quote_the_file(tmp_path):
    # `asm:PATH` may name any file the server can read: gas's messages echo the source.
    msg = refused(f"{CANARY}:$6$salt$hash:19000:0:99999:7:::\n")
    assert CANARY not in msg and "salt" not in msg and msg.startswith("line 1: ")


# ---- finding 4: sizes ----------------------------------------------------------------------


def _rss_peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize(
    "src",
    [
        ".space 0x10000000\n",
        ".bss\n.space 0x10000000\n",
        "nop\n.fill 0x1000000, 8, 0x90\n",
        ".space 0x20001\n",
    ],
    ids=["space", "bss", "fill", "one-over"],
)
def test_program_over_128k_refused_with_bounded_memory(src):
    peak = _rss_peak_kib()
    assert refused(src) == "program larger than 128 KiB"
    assert _rss_peak_kib() - peak < 64 << 10  # the 256 MB are never in this process


def test_program_of_exactly_128k_fits():
    img = user("nop\n.space 0x1ffff, 0xcc\n")
    assert len(img) == LIMIT and img[:2] == b"\x90\xcc" and img[-1] == 0xCC


def test_sparse_512mb_source_refused_unread(tmp_path):
    p = tmp_path / "huge.S"
    with open(p, "wb") as f:
        f.truncate(512 << 20)
    peak = _rss_peak_kib()
    with pytest.raises(asm.AsmError) as e:
        asm.read_source(str(p))
    assert str(e.value) == "source larger than 1024 KiB"
    assert _rss_peak_kib() - peak < 64 << 10
    assert W.validate_workload(DomainSpec("x", memory=4, workload=f"asm:{p}")) == (
        f"workload: asm: {p}: source larger than 1024 KiB"
    )


def test_fifo_and_directory_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.S"
    os.mkfifo(fifo)
    for p in (fifo, tmp_path):
        err = W.validate_workload(DomainSpec("x", memory=4, workload=f"asm:{p}"))
        assert err == f"workload: asm: cannot read {p}"


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
def test_cpu_burner_stopped_by_its_limit():
    src = ".rept 1000\n.rept 1000\n.rept 1000\n.space 0\n.endr\n.endr\n.endr\n"
    # Its CPU limit stops it; on a host so loaded that the child cannot get CPU_S seconds of
    # CPU within the wall-clock limit, the wall-clock limit stops it first.
    assert refused(src) in (
        f"assembler exceeded its CPU time limit ({asm.CPU_S} s)",
        f"assembler did not finish within {asm.WALL_S:g} s",
    )


def test_memory_hog_stopped_by_its_limit():
    msg = refused(".rept 100000000\nnop\n.endr\n")
    assert msg.startswith("out of memory allocating "), msg


# ---- finding 9: a non-ASCII byte -------------------------------------------------------------


def test_non_ascii_byte_gives_one_error_line(tmp_path):
    p = tmp_path / "latin1.S"
    p.write_bytes(b"    mov rax, 1\xe9\n")
    err = W.validate_workload(DomainSpec("x", memory=4, workload=f"asm:{p}"))
    assert err == f"workload: asm: {p}: line 1: junk `\\xe9' after expression"
    # ... and in comments and strings it is just a byte.
    assert user(b'# caf\xe9\n.ascii "caf\xc3\xa9"\n') == b"caf\xc3\xa9"


def xl_create(name: str, program) -> str:
    """`xl create` of an `asm:` guest from the command line alone (the config is /dev/null)."""
    return f"xl create -q /dev/null 'name=\"{name}\"' memory=4 'workload=\"asm:{program}\"'"


def test_non_ascii_byte_through_the_shell(machine, tmp_path):
    p = tmp_path / "bad.S"
    p.write_bytes(b"nop\n\xff\xfe\n")
    out = bytearray()
    sh = Dom0Shell(machine, out.extend, Dom0Fs("/"))  # tests name files by host path
    assert sh.run(xl_create("na", p)) == 3
    text = out.decode("utf-8")
    assert text.count("\n") == 1 and "internal error" not in text
    assert text.startswith(f"workload: asm: {p}: line 2: ")


# ---- finding 10: the encoding keystone got wrong -------------------------------------------


def test_absolute_memory_operand_is_not_rip_relative():
    # mov rbx, [disp32] with a SIB byte, no base: 48 8b 1c 25 <0x100000>
    assert user("mov rbx, qword ptr [0x100000]") == bytes.fromhex("488b1c2500001000")
    # and RIP-relative only when asked for, resolved against the load address
    assert user("lea rbx, [rip + d]\nd: .byte 7") == bytes.fromhex("488d1d0000000007")


def test_sections_laid_out_from_the_load_address():
    img = user('.data\nmsg: .asciz "hi"\n.text\nmov rax, offset msg\n.bss\nbuf: .space 64\n')
    # .text first (mov rax, imm32 sign-extended = 7 bytes), then .data at 0x20007
    assert img == bytes.fromhex("48c7c007000200") + b"hi\x00"


def test_undefined_symbol_is_one_line():
    assert refused("jmp nowhere") == "undefined reference to `...'"


def test_empty_program():
    assert refused("# nothing\n") == "no instructions"


# ---- issue 9: one assembly per xl create, no import cycle ----------------------------------


def test_asm_workload_assembled_once_per_create(machine, tmp_path, monkeypatch):
    from emu.domain_build import kernel_image

    kernel_image()
    calls = []
    real = asm.assemble
    monkeypatch.setattr(asm, "assemble", lambda *a, **k: calls.append(a) or real(*a, **k))
    p = tmp_path / "hi.S"
    p.write_text(SAY_HI)
    dom = create(machine, "once", f"asm:{p}", memory=4)
    try:
        assert len(calls) == 1 and calls[0][1:] == (W.USER_ENTRY, LIMIT)
        assert dom.spec.prepared is not None and dom.spec.prepared.image == user(SAY_HI)
        assert wait_for(lambda: "h" in console_lines(dom))
    finally:
        machine.destroy_domain(dom)


def test_workload_does_not_import_the_builder():
    for mod in ("workload", "asm"):
        tree = ast.parse((Path(W.__file__).parent / f"{mod}.py").read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(n and "domain_build" in n for n in names), (mod, names)


# ---- the dom0 shell waits for a Pending command without blocking ---------------------------


class ManualRunner:
    """A runner the test fires by hand: what deferToThread does, minus the thread."""

    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def __call__(self, fn):
        d = Deferred()
        self.jobs.append((fn, d))
        return d

    def finish(self) -> None:
        fn, d = self.jobs.pop(0)
        try:
            d.callback(fn())
        except Exception as e:
            d.errback(e)


def test_shell_prompt_returns_after_the_assembler(machine, tmp_path):
    p = tmp_path / "hi.S"
    p.write_text(SAY_HI)
    out = bytearray()
    sh = Dom0Shell(machine, out.extend, Dom0Fs("/"))  # tests name files by host path
    sh.runner = runner = ManualRunner()
    sh.prompt()
    out.clear()
    sh.rx(f"{xl_create('bg', p)}; echo rc=$?\r".encode())
    assert len(runner.jobs) == 1 and sh.waiting is not None
    assert PROMPT.encode() not in out and b"rc=0" not in out
    assert all(d.name != "bg" for d in machine.domains.values())
    out.clear()
    sh.rx(b"echo typed\r")  # typed while waiting: held, not echoed yet
    assert b"typed" not in out
    runner.finish()
    dom = next(d for d in machine.domains.values() if d.name == "bg")
    text = out.decode()
    assert text.startswith("rc=0\r\n" + PROMPT + "echo typed\r\ntyped\r\n" + PROMPT), text
    machine.destroy_domain(dom)


def test_shell_wait_error_and_ctrl_c(machine, tmp_path):
    p = tmp_path / "hang.S"
    p.write_bytes(b"a::")
    out = bytearray()
    sh = Dom0Shell(machine, out.extend, Dom0Fs("/"))  # tests name files by host path
    sh.runner = runner = ManualRunner()
    sh.prompt()
    out.clear()
    sh.rx(f"{xl_create('e', p)}\r".encode())
    runner.finish()
    assert out.decode().endswith(
        f"workload: asm: {p}: line 1: junk at end of line, first unrecognized character "
        f"is `:'\r\n{PROMPT}"
    )
    assert sh.status == 3
    out.clear()
    p.write_text(SAY_HI)
    sh.rx(f"{xl_create('gone', p)}\rxyz\x03".encode())
    assert out.decode().endswith("^C\r\n" + PROMPT) and sh.status == 130
    runner.finish()  # the result of an abandoned wait is dropped
    assert all(d.name != "gone" for d in machine.domains.values())
    assert sh.waiting is None and out.decode().endswith("^C\r\n" + PROMPT)


def test_spec_errors_come_first_and_without_waiting(machine, tmp_path):
    out = bytearray()
    sh = Dom0Shell(machine, out.extend, Dom0Fs("/"))  # tests name files by host path
    sh.runner = runner = ManualRunner()
    assert sh.run_line(
        "xl create /dev/null 'name=\"Domain-0\"' memory=4 'workload=\"asm:/etc/hosts\"'"
    )
    assert runner.jobs == [] and sh.status == 3
    assert "already exists" in out.decode()


@pytest.mark.parametrize("prlimit", [True, False], ids=["prlimit", "preexec_fn"])
def test_limits_hold_with_and_without_prlimit(monkeypatch, prlimit):
    if not prlimit:
        monkeypatch.setattr(asm, "PRLIMIT", None)
    elif asm.PRLIMIT is None:
        pytest.skip("no prlimit(1) on this machine")
    assert user("nop") == b"\x90"
    assert refused(".space 0x10000000\n") == "program larger than 128 KiB"
    assert refused(".rept 100000000\nnop\n.endr\n").startswith("out of memory allocating ")
    monkeypatch.setattr(asm, "AS_ARGV", ["no-such-as", *asm.AS_ARGV[1:]])
    assert refused("nop") == "no-such-as not found: install GNU binutils"
