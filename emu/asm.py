"""The guest-program assembler: GNU as (binutils) in a separate, resource-limited process.

Why GNU as and not keystone (the assembler used before): keystone 0.9.2 (2020, unmaintained)
hangs forever on three-byte inputs such as `a::`, segfaults the whole server on others, and
miscompiles `mov rbx, qword ptr [0x100000]` as RIP-relative. GNU as is maintained, fast, the
reference for x86 syntax, and is on every build machine (.ci/run installs binutils).
Programs are written in Intel syntax without `%` prefixes: `as -msyntax=intel -mnaked-reg`,
which is `.intel_syntax noprefix` without shifting the user's line numbers.

How a program is assembled, and why each step:
- `read_source(path)`: a regular file only (a FIFO or a device would block), opened without
  following a FIFO's open(), size checked from fstat before one read of at most MAX_SOURCE
  bytes (a 512 MB sparse file is refused, not read).
- `check_source(src)`: directives that read a file (`.incbin`, `.include`) are refused, as
  are the facilities that could build such a directive from pieces (`.macro`, `.irp`,
  `.irpc`, `.mri`, `.altmacro`). The check is on the raw bytes, comments and strings
  included, so no disagreement between this scanner and gas's lexer can hide a directive.
  The error names the directive, never the path it names: nothing is learnt about the host.
- `assemble(src, base, limit)`: writes the source into a fresh temporary directory and runs
  `as`, then `ld`, each as its own process that sets its rlimits before exec (CPU time,
  address space, file size, open files, no core dump; `resource.setrlimit` in the child)
  in its own process group, with stderr to a file under the same size limit; the whole
  group is killed at the wall-clock deadline. `ld` places .text, .rodata, .data, .bss from
  `base`; the ELF's PT_LOAD segments are read here (no objcopy) and anything outside
  [base, base + limit) is refused -- so `.space 0x10000000` is stopped by RLIMIT_FSIZE
  after 8 MB of output, never grown in the server. (A Python child process doing the same
  cost ~100 ms of start-up per program; as + ld take ~10 ms.)
The server calls `assemble` from a worker thread (xenconsole/dom0/xl_domain.py), so the
console never waits on it; a hang, a crash or a memory blow-up of gas ends in one error line.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import time

MAX_SOURCE = 1 << 20  # bytes of assembly source read from a file
WALL_S = 10.0  # wall-clock limit for as and ld together
CPU_S = 4  # RLIMIT_CPU of each tool (as, ld)
MEM_BYTES = 512 << 20  # RLIMIT_AS
FSIZE_BYTES = 8 << 20  # RLIMIT_FSIZE: the object file, the linked ELF
NOFILE = 64
MAX_ERROR = 200  # characters of an assembler message shown to the user

# A directive that reads a host file, or a facility that could spell one from pieces.
_REFUSED = re.compile(
    rb"(?i)(incbin|include)(?![A-Za-z0-9_$.])|"
    rb"\.(macro|irpc?|mri|altmacro)(?![A-Za-z0-9_$.])"
)


class AsmError(ValueError):
    """The program cannot be assembled; one line for the user (no file name in it)."""


class SourceError(AsmError):
    """The source file cannot be opened or is not a regular file."""


def read_source(path: str, max_bytes: int = MAX_SOURCE) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; AsmError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError("cannot read: not a regular file")
        if st.st_size > max_bytes:
            raise AsmError(f"source larger than {max_bytes >> 10} KiB")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew since the fstat
        raise AsmError(f"source larger than {max_bytes >> 10} KiB")
    return data


def check_source(src: bytes) -> None:
    """Refuse directives that open files (and macro facilities); AsmError naming the line."""
    m = _REFUSED.search(src)
    if m is None:
        return
    line = src.count(b"\n", 0, m.start()) + 1
    word = m.group(0).decode("ascii").lower().lstrip(".")
    if word in ("incbin", "include"):
        raise AsmError(f"line {line}: .{word} is not allowed: a guest program cannot read files")
    raise AsmError(f"line {line}: .{word} is not allowed in a guest program")


def one_line(text: str, limit: int = MAX_ERROR) -> str:
    """`text` as one printable line: control characters and non-ASCII escaped, cut short."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def assemble(src: bytes | str, base: int, limit: int, wall_s: float = WALL_S) -> bytes:
    """The flat image of `src` linked at `base`, at most `limit` bytes (bss included).

    Blocks the calling thread while `as` and `ld` run (at most `wall_s` in all): call it
    from a worker thread in a server. AsmError with one line on any failure.
    """
    if isinstance(src, str):
        src = src.encode("utf-8", "surrogateescape")
    if len(src) > MAX_SOURCE:
        raise AsmError(f"source larger than {MAX_SOURCE >> 10} KiB")
    check_source(src)
    big = f"program larger than {limit >> 10} KiB"
    deadline = time.monotonic() + wall_s
    with tempfile.TemporaryDirectory(prefix="xenconsole-asm-") as tmp:
        with open(os.path.join(tmp, "prog.s"), "wb") as f:
            f.write(src + b"\n")  # gas warns about a missing final newline
        with open(os.path.join(tmp, "link.ld"), "w") as f:
            f.write(LINKER_SCRIPT % base)
        _run(AS_ARGV, tmp, deadline, big)
        _run([*LD_ARGV, "-e", hex(base)], tmp, deadline, big)
        with open(os.path.join(tmp, "out.elf"), "rb") as f:
            elf = f.read(FSIZE_BYTES)
    image = _flat_image(elf, base, limit, big)
    if not image:
        raise AsmError("no instructions")
    return image


LINKER_SCRIPT = """\
SECTIONS {
  . = %#x;
  /DISCARD/ : { *(.note .note.*) *(.comment) *(.eh_frame) *(.eh_frame_hdr) }
  .text : { *(.text .text.*) }
  .rodata : { *(.rodata .rodata.*) }
  .data : { *(.data .data.*) }
  .bss : { *(.bss .bss.*) *(COMMON) }
}
"""

AS_ARGV = ["as", "--64", "--no-warn", "-msyntax=intel", "-mnaked-reg", "-o", "prog.o", "prog.s"]
# -N: one RWX segment, no page alignment (the image is flat); no build-id note.
LD_ARGV = ["ld", "-static", "-nostdlib", "-N", "--build-id=none", "--no-warn-rwx-segments"]
LD_ARGV += ["-T", "link.ld", "-o", "out.elf", "prog.o"]
_ENV = {"PATH": os.defpath, "LC_ALL": "C"}


RLIMITS = (
    (resource.RLIMIT_CPU, "cpu", CPU_S, CPU_S + 1),
    (resource.RLIMIT_AS, "as", MEM_BYTES, MEM_BYTES),
    (resource.RLIMIT_FSIZE, "fsize", FSIZE_BYTES, FSIZE_BYTES),
    (resource.RLIMIT_NOFILE, "nofile", NOFILE, NOFILE),
    (resource.RLIMIT_CORE, "core", 0, 0),
)
# util-linux's prlimit(1) sets the limits on itself and execs the tool: the server then
# spawns with vfork. Without it, a preexec_fn does the same after a full fork(), which
# copies the page tables of a large server (~8 ms a tool with 512 MB resident).
PRLIMIT = shutil.which("prlimit", path=os.defpath)


def _limits() -> None:
    """In the child between fork and exec: its own rlimits (only C calls, no locks)."""
    for res, _name, soft, hard in RLIMITS:
        resource.setrlimit(res, (soft, hard))


def _limited(argv: list[str]) -> tuple[list[str], object]:
    """(argv, preexec_fn) that run `argv` under RLIMITS."""
    if PRLIMIT is None:
        return argv, _limits
    opts = [f"--{name}={soft}:{hard}" for _res, name, soft, hard in RLIMITS]
    return [PRLIMIT, *opts, "--", *argv], None


def _run(argv: list[str], cwd: str, deadline: float, big: str) -> None:
    """Run one tool under the limits; AsmError with its first error on failure."""
    tool = argv[0]
    err_path = os.path.join(cwd, f"{tool}.err")
    argv, preexec = _limited(argv)
    with open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,  # a file under RLIMIT_FSIZE: a flood of messages cannot grow us
                env=_ENV,
                preexec_fn=preexec,  # setrlimit only: safe between fork and exec
                start_new_session=True,  # its own process group: a timeout kills it all
                restore_signals=True,  # SIGXFSZ back to its default: an overrun kills
            )
        except FileNotFoundError:  # without prlimit; with it, exit status 127 below
            raise AsmError(f"{tool} not found: install GNU binutils") from None
        try:
            rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    if rc == 0:
        return
    if rc is None:
        raise AsmError(f"assembler did not finish within {WALL_S:g} s")
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        raise AsmError(f"assembler exceeded its CPU time limit ({CPU_S} s)")
    with open(err_path, "rb") as f:
        text = f.read(65536)
    if rc == -signal.SIGXFSZ:
        raise AsmError("too many assembler messages" if len(text) == 65536 else big)
    if rc == 127 and PRLIMIT is not None and b"No such file" in text:
        raise AsmError(f"{tool} not found: install GNU binutils")
    msg = _tool_error(text, f"{tool}:")
    raise AsmError(one_line(msg or f"{tool} failed ({_status(rc)})"))


def _status(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _elide(msg: str) -> str:
    """Drop the source text gas quotes back (`...'), but for one character or a directive
    name: `asm:PATH` may name any file the server can read, and an error must not print it."""

    def repl(m: re.Match) -> str:
        inner = m.group(1)
        keep = len(inner) <= 1 or re.fullmatch(r"\.[a-z0-9_]{1,24}", inner)
        return m.group(0) if keep else "`...'"

    return re.sub(r"[`']([^`']*)'", repl, msg)


def _tool_error(stderr: bytes, prefix: str) -> str | None:
    """The first error of `as` / `ld`, without the temporary file names or source text."""
    for raw in stderr.decode("latin-1").splitlines():
        m = re.match(r"prog\.s:(\d+): (?:Error|Fatal error): (.*)", raw)
        if m:
            return f"line {m.group(1)}: {_elide(m.group(2))}"
        if raw.startswith(prefix) and "Assembler messages" not in raw and "warning:" not in raw:
            msg = raw[len(prefix) :].strip()
            msg = re.sub(r"^(prog\.o|out\.elf)(:\([^)]*\))?: ", "", msg)
            msg = re.sub(r"^in function `[^']*':\s*", "", msg)
            if msg:
                return _elide(msg)
    return None


def _flat_image(elf: bytes, base: int, limit: int, big: str) -> bytes:
    """Lay the PT_LOAD segments of a linked ELF64 into one image starting at `base`."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise AsmError("linker produced no 64-bit ELF")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _pa, filesz, memsz, _al = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 1 or memsz == 0:  # PT_LOAD only
            continue
        if vaddr < base:
            raise AsmError(f"a section lies below {base:#x}")
        if vaddr + memsz > base + limit:
            raise AsmError(big)
        segs.append((vaddr - base, elf[off : off + filesz]))
    end = max((o + len(d) for o, d in segs), default=0)
    image = bytearray(end)
    for o, d in segs:
        image[o : o + len(d)] = d
    return bytes(image)
