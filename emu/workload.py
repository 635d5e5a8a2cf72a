"""Guest workloads (docs/contract.md): parsing, validation against a domain's memory, layout.

A workload string is `idle`, `touch:pages=N[,stride=S][,write=0|1][,start=GFN]`,
`random:ws=N[,seed=K][,write=0|1]`, `stream:pages=N`, `phases:a=GFN,b=GFN,pages=N,k=K` or
`asm:PATH`. `phases` is a ground truth for keys `U`/`Z`: in each window (between two `Z`)
vCPU 0 reads the N pages from `a` once (windows 0..K-1, counting from creation), from `b`
(windows K..2K-1), from `a` again (2K..3K-1), then halts; it learns the window number from
START_WINDOW, which `Z` writes (emu/access/scan.py), and prints `phases window W` after each
pass. So the pages a window saw are exactly its phase's range plus the kernel's own: the
start-info page (GFN 0), the kernel text and vCPU 0's stack page (`puts`). `check_workload(spec)`
parses, fit-checks and (for `asm:`) assembles a DomainSpec's workload once, keeping the result
in `spec.prepared`; every later check and the guest builder (emu/domain_build.py) reuse it.
`validate_workload(spec)` is its one-line-error form, called before any memory is allocated.
Assembling runs GNU as in a limited child process (emu/asm.py) and blocks the calling thread
for up to its wall-time limit: the console server calls `check_workload` from a worker thread.

Guest-physical layout (every guest, `GuestLayout`):

    GFN 0x00          start-info page (read by the kernel; see START_* offsets)
    GFN 0x01-0x0b     guest kernel text (emu/guest/kernel.S)
    GFN 0x0c          the XenStore ring page (HVM_PARAM_STORE_PFN)
    GFN 0x0d          the balloon driver's extent list (a page of gfns for memory_op)
    GFN 0x0e          a hole in RAM, where the kernel maps shared_info (XENMEM_add_to_physmap)
    GFN 0x0f          the hypercall page (the kernel has Xen fill it through the MSR CPUID
                      leaf 0x40000002 names); `asm:` programs call HYPERCALL_PAGE + 32 * nr
    GFN 0x10-0x1f     one stack page per vCPU (at most MAX_VCPUS)
    GFN 0x20-0x3f     `asm:` user program (USER_ENTRY = 0x20000, at most 128 KiB)
    GFN 0x40-0xff     the guest's 4-level page tables, when they fit; else at the top of memory
    GFN 0x100-...     the arena (up to the page tables, or to the end of memory)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu import asm
from emu.mm.page import PAGE_SHIFT

ARENA_START = 0x100
KERNEL_GFN, KERNEL_PAGES = 0x01, 0x0B
STORE_GFN = 0x0C  # HVM_PARAM_STORE_PFN
BALLOON_GFN = 0x0D
SHINFO_GFN = 0x0E  # left unpopulated by the builder (emu/domain_build.py)
HYPERCALL_GFN = 0x0F
HYPERCALL_PAGE = HYPERCALL_GFN << 12
STACK_GFN = 0x10
MAX_VCPUS = 16
USER_GFN, USER_PAGES = 0x20, 0x20
USER_ENTRY = USER_GFN << PAGE_SHIFT
LOW_PT_GFN, LOW_PT_PAGES = 0x40, 0xC0

# Start-info page offsets (bytes), read by the kernel with `mov reg, [base + off]`.
START_MAGIC = 0x00
START_NR_PAGES = 0x08
START_ARENA_START = 0x10
START_ARENA_END = 0x18
START_KIND = 0x20
START_P0 = 0x28
START_P1 = 0x30
START_P2 = 0x38
START_P3 = 0x40
START_NR_VCPUS = 0x48
START_DOMID = 0x50
START_PT_START = 0x58
START_PT_PAGES = 0x60
START_HYPERCALL_PAGE = 0x68  # VA of the hypercall page the kernel installs
START_BALLOON_FLOOR = 0x70  # the balloon driver gives back gfns at or above this one
START_WINDOW = 0x78  # keys `Z` so far for this domain: written by `Z` (emu/access/scan.py)
START_INFO_MAGIC = int.from_bytes(b"XENCGST1", "little")

KIND_IDLE, KIND_TOUCH, KIND_RANDOM, KIND_STREAM, KIND_ASM, KIND_PHASES = range(6)
KIND_NAMES = {"idle": KIND_IDLE, "touch": KIND_TOUCH, "random": KIND_RANDOM}
KIND_NAMES.update({"stream": KIND_STREAM, "asm": KIND_ASM, "phases": KIND_PHASES})

_ALLOWED = {
    "idle": set(),
    "touch": {"pages", "stride", "write", "start"},
    "random": {"ws", "seed", "write"},
    "stream": {"pages"},
    "phases": {"a", "b", "pages", "k"},
}
_REQUIRED = {"touch": "pages", "random": "ws", "stream": "pages", "phases": "pages"}


class WorkloadError(ValueError):
    """A bad workload string or one that does not fit the domain; one line for the user."""


@dataclass
class Workload:
    kind: str
    params: dict[str, int] = field(default_factory=dict)
    path: str | None = None  # asm:PATH
    image: bytes | None = field(default=None, repr=False)  # asm: the assembled program
    checked_for: tuple = ()  # (workload text, nr_pages, vcpus) the fit check was made for

    @property
    def code(self) -> int:
        return KIND_NAMES[self.kind]

    def start_params(self) -> tuple[int, int, int, int]:
        """(p0, p1, p2, p3) as the kernel reads them from the start-info page."""
        p = self.params
        if self.kind == "touch":
            return p["pages"], p.get("stride", 1), p.get("write", 0), p.get("start", ARENA_START)
        if self.kind == "random":
            return p["ws"], p.get("seed", 1), p.get("write", 0), 0
        if self.kind == "stream":
            return p["pages"], 0, 0, 0
        if self.kind == "phases":
            return p["a"], p["b"], p["pages"], p.get("k", 1)
        return 0, 0, 0, 0

    def balloon_floor(self, arena_start: int = ARENA_START) -> int:
        """The lowest gfn the balloon driver may give back: above what the workload uses."""
        gfns = self.arena_gfns(arena_start)
        return gfns[-1] + 1 if len(gfns) else arena_start

    def arena_gfns(self, arena_start: int = ARENA_START) -> range:
        """The arena pages this workload accesses (a range: touch is strided)."""
        p = self.params
        if self.kind == "touch":
            start, stride = p.get("start", ARENA_START), p.get("stride", 1)
            return range(start, start + p["pages"] * stride, stride)
        if self.kind == "random":
            return range(arena_start, arena_start + p["ws"])
        if self.kind == "stream":
            return range(arena_start, arena_start + p["pages"])
        if self.kind == "phases":
            return range(min(p["a"], p["b"]), max(p["a"], p["b"]) + p["pages"])
        return range(0)

    def phase_gfns(self, window: int) -> range:
        """`phases`: the arena pages read in window `window` (empty once it halted)."""
        p = self.params
        phase = window // p.get("k", 1)
        if phase >= 3:
            return range(0)
        base = p["b"] if phase == 1 else p["a"]
        return range(base, base + p["pages"])


def _int(text: str, what: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise WorkloadError(f"workload: {what} must be an integer, got {text!r}") from None
    if v < 0:
        raise WorkloadError(f"workload: {what} must not be negative")
    return v


def parse_workload(text: str) -> Workload:
    """Parse a workload string; WorkloadError with one line on any mistake."""
    if not isinstance(text, str) or not text.strip():
        raise WorkloadError("workload: empty workload")
    text = text.strip()
    kind, _, rest = text.partition(":")
    if kind == "asm":
        if not rest:
            raise WorkloadError("workload: asm needs a path: asm:PATH")
        return Workload("asm", path=rest)
    if kind not in _ALLOWED:
        raise WorkloadError(
            f"workload: unknown workload {kind!r} (idle, touch, random, stream, phases, asm)"
        )
    params: dict[str, int] = {}
    if rest:
        for item in rest.split(","):
            key, eq, val = item.partition("=")
            key = key.strip()
            if not eq:
                raise WorkloadError(f"workload: {kind}: expected KEY=VALUE, got {item!r}")
            if key not in _ALLOWED[kind]:
                raise WorkloadError(f"workload: {kind}: unknown parameter {key!r}")
            params[key] = _int(val.strip(), key)
    need = _REQUIRED.get(kind)
    if need and need not in params:
        raise WorkloadError(f"workload: {kind} needs {need}=N")
    if need and params[need] == 0:
        raise WorkloadError(f"workload: {kind}: {need} must be at least 1")
    if "write" in params and params["write"] not in (0, 1):
        raise WorkloadError("workload: write must be 0 or 1")
    if kind == "phases":
        for key in ("a", "b"):
            if key not in params:
                raise WorkloadError(f"workload: phases needs {key}=GFN")
        if params.get("k", 1) == 0:
            raise WorkloadError("workload: phases: k must be at least 1")
    if kind == "touch" and params.get("stride", 1) == 0:
        raise WorkloadError("workload: touch: stride must be at least 1")
    return Workload(kind, params)


@dataclass(frozen=True)
class GuestLayout:
    nr_pages: int
    pt_start: int  # first GFN of the guest's page tables
    pt_pages: int
    arena_start: int
    arena_end: int  # exclusive

    @property
    def pt_low(self) -> bool:
        return self.pt_start < ARENA_START

    @property
    def arena_pages(self) -> int:
        return max(0, self.arena_end - self.arena_start)


def pt_pages_for(nr_pages: int) -> int:
    """Pages of 4-level tables mapping gfns 0..nr_pages-1 with 4 KiB pages."""
    l1 = -(-nr_pages // 512)
    l2 = -(-l1 // 512)
    l3 = -(-l2 // 512)
    return l1 + l2 + l3 + 1


def guest_layout(nr_pages: int) -> GuestLayout:
    pts = pt_pages_for(nr_pages)
    if pts <= LOW_PT_PAGES:
        return GuestLayout(nr_pages, LOW_PT_GFN, pts, ARENA_START, nr_pages)
    top = nr_pages - pts
    return GuestLayout(nr_pages, top, pts, ARENA_START, top)


def _spec_fields(spec) -> tuple[str, int, int]:
    return spec.workload, int(spec.memory) << (20 - PAGE_SHIFT), int(spec.vcpus)


def assemble_program(path: str, read=asm.read_source) -> bytes:
    """Read (with `read(path)`, emu/asm.py's read_source unless the caller confines paths)
    and assemble an `asm:` program at USER_ENTRY; WorkloadError."""
    try:
        src = read(path)
    except asm.SourceError:
        raise WorkloadError(f"workload: asm: cannot read {path}") from None
    except asm.AsmError as e:
        raise WorkloadError(f"workload: asm: {path}: {e}") from None
    try:
        return asm.assemble(src, USER_ENTRY, USER_PAGES << PAGE_SHIFT)
    except asm.AsmError as e:
        raise WorkloadError(f"workload: asm: {path}: {e}") from None


def _check_fit(w: Workload, nr_pages: int, vcpus: int) -> None:
    if not 1 <= vcpus <= MAX_VCPUS:
        raise WorkloadError(f"vcpus must be between 1 and {MAX_VCPUS}, got {vcpus}")
    lay = guest_layout(nr_pages + 1)  # RAM around the shared_info hole: one gfn more
    if nr_pages <= ARENA_START or lay.arena_pages <= 0:
        raise WorkloadError(f"memory={nr_pages >> 8}M leaves no arena: a guest needs at least 2M")
    p = w.params
    if w.kind == "touch":
        gfns = w.arena_gfns()
        if gfns.start < lay.arena_start or gfns[-1] >= lay.arena_end:
            raise WorkloadError(
                f"workload touch does not fit: pages {gfns.start:#x}-{gfns[-1]:#x} outside "
                f"the arena {lay.arena_start:#x}-{lay.arena_end - 1:#x}"
            )
    elif w.kind == "phases":
        for key in ("a", "b"):
            lo, hi = p[key], p[key] + p["pages"] - 1
            if lo < lay.arena_start or hi >= lay.arena_end:
                raise WorkloadError(
                    f"workload phases does not fit: {key} pages {lo:#x}-{hi:#x} outside "
                    f"the arena {lay.arena_start:#x}-{lay.arena_end - 1:#x}"
                )
    elif w.kind in ("random", "stream"):
        n = p["ws"] if w.kind == "random" else p["pages"]
        if n > lay.arena_pages:
            raise WorkloadError(
                f"workload {w.kind} does not fit: {n} pages, the arena has {lay.arena_pages}"
            )


def check_workload(spec, read=asm.read_source) -> Workload:
    """Parse, fit-check and assemble `spec`'s workload (a DomainSpec), or a bare workload
    string (syntax only). Done once per DomainSpec: the result is kept in `spec.prepared`
    and returned again while the spec's workload, memory and vcpus are unchanged. `read`
    reads an `asm:` source (xenconsole's dom0 passes one confined to dom0's filesystem)."""
    if isinstance(spec, str):
        return parse_workload(spec)
    key = _spec_fields(spec)
    prepared = spec.prepared
    if prepared is not None and prepared.checked_for == key:
        return prepared
    w = parse_workload(key[0])
    _check_fit(w, key[1], key[2])
    if w.kind == "asm":
        w.image = assemble_program(w.path, read)
    w.checked_for = key
    spec.prepared = w
    return w


def validate_workload(spec) -> str | None:
    """`xl create`'s check: None if `spec` (DomainSpec or string) is runnable, else one line."""
    try:
        check_workload(spec)
    except WorkloadError as e:
        return str(e)
    return None
