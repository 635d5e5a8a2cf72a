"""Keys `W` (walk shadow pagetables) and `X` (hexdump machine memory).

In process: every line of a full `W` is checked against the shadow entries themselves (a
collapsed run claims exactly the entries it covers), `W dN VADDR` against the guest's own
tables, `X` byte for byte against the real `hexdump -C`. Over the console (acceptance 5): a
guest writes a string at a VA; `W` shows both paths ending at one machine frame and `X` of
that frame (and of the guest's gfn) shows the string.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from guest_helpers import (
    PUTS,
    Out,
    asm_guest,
    console_lines,
    create,
    say_then_idle,
    wait_for,
)
from guest_helpers import run_key as run

from emu.access.scan import scan_domain
from emu.mm.p2m import INVALID_M2P_ENTRY
from emu.mm.page import PTE_ADDR_MASK
from keyhandlers import KeyhandlerError
from keyhandlers import walk as W
from keyhandlers.hexdump import MAX_PAGES, hexdump_memory
from keyhandlers.walk import flags_str, walk_shadow_pagetables
from xenconsole.expect import Console
from xenconsole.testing import serve

# The programs and configs these tests write are named by host path: dom0 sees the host.
HOST_FILES = ("--dom0-root", "/")

pytestmark = [pytest.mark.timeout(90), pytest.mark.machine(shared=True)]

L1_LINE = re.compile(
    r"^ +l1\[(?P<i0>[0-9a-f]{3})(?:-(?P<i1>[0-9a-f]{3})(?: step (?P<k>\d+))?)?\] "
    r"smfn (?P<smfn>0x[0-9a-f]+)(?: x(?P<n>\d+))? "
    r"-> mfn (?P<m0>0x[0-9a-f]+)(?:-(?P<m1>0x[0-9a-f]+))? "
    r"gfn (?P<g0>0x[0-9a-f]+|-)(?:-(?P<g1>0x[0-9a-f]+))? (?P<flags>[P-] (?:RW|--) (?:US|--) "
    r"[A-] [D-] (?:NX|--))$"
)
UPPER_LINE = re.compile(
    r"^( +)l([234])\[([0-9a-f]{3})\] smfn (0x[0-9a-f]+) -> (0x[0-9a-f]+) (\S.{13})  \((.*)\)$"
)
WRITER = (
    """
    lea rsi, [rip + msg]
    mov rdi, 0x105010
copy:
    mov al, byte ptr [rsi]
    mov byte ptr [rdi], al
    inc rsi
    inc rdi
    test al, al
    jnz copy
    lea rsi, [rip + done]
    call puts
idle:
    sti
    hlt
    jmp idle
msg:
    .asciz "XENCONSOLE scan test: bytes the guest wrote"
done:
    .asciz "wrote\\n"
"""
    + PUTS
)


def actual_l1(m, dom) -> dict[tuple[int, int], tuple[int, str, str]]:
    """(l1 smfn, index) -> (mfn, gfn text, flags) for every present shadow L1 entry."""
    res = {}
    for smfn in dom.paging.shadow_l1_mfns().tolist():
        ents = m.ram.page64(smfn)
        for i in np.flatnonzero(ents & np.uint64(1)).tolist():
            e = int(ents[i])
            mfn = (e & PTE_ADDR_MASK) >> 12
            g = int(m.m2p[mfn])
            res[(smfn, i)] = (mfn, "-" if g == INVALID_M2P_ENTRY else hex(g), flags_str(e))
    return res


def claimed_l1(lines: list[str]) -> dict[tuple[int, int], tuple[int, str, str]]:
    res = {}
    for line in lines:
        mt = L1_LINE.match(line)
        if not mt:
            continue
        i0, smfn, m0 = int(mt["i0"], 16), int(mt["smfn"], 16), int(mt["m0"], 16)
        if mt["i1"] is None:
            res[(smfn, i0)] = (m0, mt["g0"], mt["flags"])
            continue
        i1, k, n = int(mt["i1"], 16), int(mt["k"] or 1), int(mt["n"])
        g0, g1, m1 = int(mt["g0"], 16), int(mt["g1"], 16), int(mt["m1"], 16)
        assert (i1 - i0) // k + 1 == n and m1 - m0 == i1 - i0 == g1 - g0, line
        for j in range(n):
            res[(smfn, i0 + j * k)] = (m0 + j * k, hex(g0 + j * k), mt["flags"])
    return res


def test_full_walk_claims_exactly_the_shadow_entries(machine, monkeypatch):
    dom = create(machine, "wrnd", "random:ws=700,seed=5,write=1", memory=16)
    assert wait_for(lambda: scan_domain(machine, dom, 0x100, 0x100 + 699).nr_accessed == 700)
    machine.sched.pause_domain(dom)
    d = f"d{dom.domid}"
    lines = run(walk_shadow_pagetables, machine, d)
    want = actual_l1(machine, dom)
    assert claimed_l1(lines) == want
    pool = dom.paging.pool
    assert lines[0] == (
        f"{d}: shadow pool {pool.total_pages} pages, {pool.free_pages} free, "
        f"{len(pool.type)} in use: 1 l4, 1 l3, 1 l2, {len(dom.paging.shadow_l1_mfns())} l1"
    )
    assert lines[-1] == (
        f"{d}: {len(want)} present l1 entries in {len(dom.paging.shadow_l1_mfns())} l1 shadow(s)"
    )
    # Upper-level lines name real children and the guest table each one shadows.
    uppers = [UPPER_LINE.match(x) for x in lines if UPPER_LINE.match(x)]
    assert len(uppers) >= 3
    for mt in uppers:
        child = int(mt[5], 16)
        g = dom.paging.pool.back[child]
        assert mt[7] == f"guest l{int(mt[2]) - 1} gfn {int(machine.m2p[g]):#x} mfn {g:#x}"
    # Far fewer lines than entries (contiguous runs collapse), and a cap that says so.
    assert len(lines) < len(want) // 4
    monkeypatch.setattr(W, "MAX_L1_LINES", 3)
    short = run(walk_shadow_pagetables, machine, d)
    shown = [x for x in short if L1_LINE.match(x)]
    assert len(shown) == 3
    hidden = len([x for x in lines if L1_LINE.match(x)]) - 3
    assert short[-1].endswith(f"l1 shadow(s), {hidden} l1 lines not shown")
    assert all(want[k] == v for k, v in claimed_l1(short).items())
    machine.destroy_domain(dom)


def test_walk_of_one_address(machine, tmp_path):
    dom = asm_guest(machine, tmp_path, "wva", WRITER, memory=16)
    assert wait_for(lambda: console_lines(dom) == ["wrote"])
    d = f"d{dom.domid}"
    lines = run(walk_shadow_pagetables, machine, d, "0x105010")
    mfn = int(dom.p2m[0x105])
    assert lines[-1] == f"both paths end at machine frame {mfn:#x}"
    assert lines[-2].startswith(f"page    | gfn 0x105 -> mfn {mfn:#x} ")
    assert lines[-2].endswith(f"| mfn {mfn:#x} (gfn 0x105)")
    rows = {x[:2]: x for x in lines if re.match(r"l[1-4]  ", x)}
    assert sorted(rows) == ["l1", "l2", "l3", "l4"]
    # The guest column shows the guest's own PTE for 0x105 (A and D set by its write).
    from emu.domain_build import guest_pte_flags

    pte = int(guest_pte_flags(machine, dom, [0x105])[0])
    assert f" {pte:016x} {flags_str(pte)} |" in rows["l1"]
    assert flags_str(pte) == "P RW -- A D NX"
    assert rows["l1"].startswith("l1  105 | ")
    # An address the guest never touched: the guest path ends, the shadow has no entry.
    lines = run(walk_shadow_pagetables, machine, d, "0x900000")
    assert lines[-1] == (
        f"guest path ends at machine frame {int(dom.p2m[0x900]):#x}; no present shadow "
        "(the next access faults)"
    )
    with pytest.raises(KeyhandlerError, match="non-canonical"):
        run(walk_shadow_pagetables, machine, d, "0x0000800000000000")
    machine.destroy_domain(dom)


@pytest.mark.skipif(shutil.which("hexdump") is None, reason="no hexdump(1)")
def test_hexdump_lines_are_hexdump_C(machine):
    mfn = machine.heap.alloc_domheap_pages(None, 1)  # two anonymous frames for the test
    rng = np.random.default_rng(7)
    data = bytearray(8192)
    data[:100] = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    text = b"Hello, hexdump! \x00\x01\x7f\x80 tail" + b"x" * 16
    data[4096 : 4096 + len(text)] = text
    data[5000:5016] = b"A" * 16
    data[5016:5048] = b"A" * 32  # identical lines collapse into one `*`
    assert len(data) == 8192
    machine.ram.write(mfn << 12, bytes(data))
    lines = run(hexdump_memory, machine, hex(mfn), "2")
    ref = subprocess.run(["hexdump", "-C"], input=bytes(data), capture_output=True, check=True)
    base = mfn << 12

    def rebase(line: str) -> str:
        if line == "*":
            return line
        addr, _, rest = line.partition("  ")
        return f"{int(addr, 16) - base:08x}" + ("  " + rest if rest else "")

    assert [rebase(x) for x in lines] == ref.stdout.decode().splitlines()
    machine.heap.free_domheap_pages(mfn, 1)


def test_hexdump_guest_pages_cap_and_holes(machine):
    dom = create(machine, "xg", "idle", memory=16)
    d = f"d{dom.domid}"
    lines = run(hexdump_memory, machine, d, "0x1", "1")  # the guest kernel's first page
    assert lines[0] == f"{d} gfn 0x1 -> mfn {int(dom.p2m[1]):#x}"
    assert lines[1].startswith("0000000000001000  ")
    assert lines[-1] == "0000000000002000"
    big = run(hexdump_memory, machine, d, "0x100", "100")
    assert big[0] == f"100 pages asked, dumping the first {MAX_PAGES} (the most one X shows)"
    assert sum(1 for x in big if x.startswith(f"{d} gfn ")) == MAX_PAGES
    assert big[-1] == f"{(0x100 + MAX_PAGES) << 12:016x}"
    # The memory model's balloon (emu/mm/memory.py set_target) takes the 256 highest gfns:
    # 0xf01-0x1000, RAM being laid out around the shared_info hole at gfn 0x0e.
    machine.set_target(dom, 4096 - 256)
    lines = run(hexdump_memory, machine, d, "0xf00", "3")
    assert f"{d} gfn 0xf01 -> hole (not populated)" in lines
    assert f"{d} gfn 0xf02 -> hole (not populated)" in lines
    with pytest.raises(KeyhandlerError, match=f"{d} gfn 0xf01 is not populated"):
        run(hexdump_memory, machine, d, "0xf01")
    end = machine.ram.nr_frames
    tail = run(hexdump_memory, machine, hex(end - 1))
    assert tail[-1] == f"{end << 12:016x}"
    out = Out()  # capped to 16 pages, still past the end: the error is the only line
    with pytest.raises(KeyhandlerError, match="run past the end of RAM"):
        hexdump_memory(machine, out, (hex(end - 8), "100"))
    assert out == []
    machine.destroy_domain(dom)


@pytest.mark.timeout(90)
def test_walk_and_hexdump_over_the_console(tmp_path):
    src = tmp_path / "writer.S"
    src.write_text(WRITER)
    cfg = tmp_path / "host.toml"
    cfg.write_text(
        '[host]\nmemory = "512M"\ncpus = 2\ndom0_mem = "128M"\n\n[[domain]]\nname = "w"\n'
        f'memory = 16\nvcpus = 1\nworkload = "asm:{src}"\n'
    )
    with serve(*HOST_FILES, "--config", str(cfg), wait=True) as host:
        with Console.open(host.urls["telnet"], timeout=30) as con:
            con.expect_exact("root@dom0:~# ")
            for _ in range(100):
                if "(d1) wrote" in con.run("xl dmesg"):
                    break
            out = con.run("xl debug-keys W d1 0x105010")
            assert out.startswith("(XEN) 'W' pressed -> walking shadow pagetables\n")
            end = re.search(r"^\(XEN\) both paths end at machine frame (0x[0-9a-f]+)$", out, re.M)
            assert end, out
            mfn = int(end.group(1), 16)
            assert re.search(rf"^\(XEN\) page    \| gfn 0x105 -> mfn {mfn:#x} ", out, re.M)
            dump = con.run(f"xl debug-keys X {mfn:#x}")
            a = mfn << 12
            first = f"(XEN) {a + 0x10:016x}  58 45 4e 43 4f 4e 53 4f  4c 45 20 73 63 61 6e 20  "
            assert first + "|XENCONSOLE scan |" in dump.splitlines()
            rows = ((0x20, "test: bytes the "), (0x30, "guest wrote....."))
            for off, text in rows:
                pat = rf"^\(XEN\) {a + off:016x}  .*  \|{re.escape(text)}\|$"
                assert re.search(pat, dump, re.M), dump
            gdump = con.run("xl debug-keys X d1 0x105")
            assert f"(XEN) d1 gfn 0x105 -> mfn {mfn:#x}" in gdump
            assert re.search(r"^\(XEN\) 0000000000105020  .*  \|test: bytes the \|$", gdump, re.M)
            # The full walk, on the serial line through the args prompt, lists that entry.
            walk = con.debug_key("W", "d1")
            assert re.search(
                rf"^\(XEN\) +l1\[105\] smfn 0x[0-9a-f]+ -> mfn {mfn:#x} gfn 0x105 "
                r"P RW US A D NX$",
                walk,
                re.M,
            ), walk


SWITCH = say_then_idle(
    """
    mov rsi, 0x40000
    mov rdi, 0x100000
    mov rcx, 512
copy:
    mov rax, qword ptr [rsi]
    mov qword ptr [rdi], rax
    add rsi, 8
    add rdi, 8
    dec rcx
    jnz copy
    mov rax, 0x100000
    mov cr3, rax
    mov al, byte ptr [0x200000]
""",
    "switched",
)


def test_walk_after_a_cr3_switch_pinned_and_shared_shadows(machine, tmp_path):
    # The guest copies its L4 (gfn 0x40) to gfn 0x100 and loads that: the old top-level
    # shadow stays pinned in no CR3, and both top levels share the shadow L3 below them.
    dom = asm_guest(machine, tmp_path, "sw", SWITCH, memory=16)
    assert wait_for(lambda: console_lines(dom) == ["switched"])
    assert wait_for(lambda: dom.vcpus[0].blocked)
    d = f"d{dom.domid}"
    lines = run(walk_shadow_pagetables, machine, d)
    assert lines[1].startswith(f"{d}v0 cr3: guest l4 gfn 0x100 mfn {int(dom.p2m[0x100]):#x}, ")
    pinned = [x for x in lines if x.startswith(f"{d} pinned, in no CR3: guest l4 gfn 0x40 ")]
    assert len(pinned) == 1
    assert any(x.endswith(" shown above)") for x in lines)
    assert claimed_l1(lines) == actual_l1(machine, dom)
    machine.destroy_domain(dom)


BIG = say_then_idle(
    """
    mov rdi, 0x42010
    mov rax, 0x400083
    mov qword ptr [rdi], rax
    mov rax, cr3
    mov cr3, rax
    mov rdi, 0x401020
    mov rax, 0x2165676170206267
    mov qword ptr [rdi], rax
""",
    "big",
)


def test_walk_through_a_guest_2mib_page(machine, tmp_path):
    # The guest maps VA 0x400000 with one 2 MiB page (its l2 at gfn 0x42, entry 2 -> PSE
    # gfn 0x400) and writes at 0x401020: the shadow splinters it into an fl1.
    dom = asm_guest(machine, tmp_path, "big", BIG, memory=16)
    assert wait_for(lambda: console_lines(dom) == ["big"])
    d = f"d{dom.domid}"
    lines = run(walk_shadow_pagetables, machine, d, "0x401020")
    mfn = int(dom.p2m[0x401])
    rows = {x[:2]: x for x in lines if re.match(r"l[1-4]  ", x)}
    assert rows["l2"].startswith("l2  002 | 0x42/")  # PS | A | D: the walker set A and D
    assert " 00000000004000e3 P RW -- A D -- | " in rows["l2"]
    assert rows["l1"].startswith("l1  001 | (in the guest's 2 MiB page above)")
    assert lines[-2].startswith(f"page    | gfn 0x401 -> mfn {mfn:#x} ")
    assert lines[-1] == f"both paths end at machine frame {mfn:#x}"
    full = run(walk_shadow_pagetables, machine, d)
    assert any(x.endswith("(fl1: guest 2 MiB page at gfn 0x400)") for x in full), full
    assert " fl1" in full[0]
    assert claimed_l1(full) == actual_l1(machine, dom)
    dump = run(hexdump_memory, machine, hex(mfn))
    assert dump[2].endswith("|gb page!........|"), dump
    machine.destroy_domain(dom)
