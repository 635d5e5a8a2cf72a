"""Keys `U` and `Z` end to end over the console (issue 5, acceptance 1-4 and 6).

One served host with small guests (16-32 MiB, so the arena is gfns 0x100-0xfff or
0x100-0x1fff): touch workloads with several page counts, strides and read/write mixes, an
`asm:` guest that reads and writes a known mix, a random workload, and an `asm:` guest that
re-touches its pages in numbered passes (for the window after `Z`). Every count is asserted
exactly, through `xl debug-keys U dN FIRST-LAST` in the dom0 shell.
"""

from __future__ import annotations

import re
import time

import pytest
from guest_helpers import PUTS, say_then_idle

from keyhandlers.access import parse_report
from xenconsole.expect import Console
from xenconsole.testing import serve

# The programs and configs these tests write are named by host path: dom0 sees the host.
HOST_FILES = ("--dom0-root", "/")

pytestmark = pytest.mark.timeout(120)


# Reads 256 pages from gfn 0xe80, writes every 4th of them (64), then idles.
MIX = say_then_idle(
    """
    mov rsi, 0xe80000
    mov rcx, 256
    xor rdx, rdx
mix_loop:
    mov al, byte ptr [rsi]
    test rdx, 3
    jnz mix_skip
    mov byte ptr [rsi], 0x5a
mix_skip:
    add rsi, 0x1000
    inc rdx
    dec rcx
    jnz mix_loop
""",
    "mix done",
)

# Forever: read 100 pages (gfn 0x200, stride 2), print `pass N`, spin a while.
LOOP = (
    """
    xor r12, r12
again:
    mov rsi, 0x200000
    mov rcx, 100
touch:
    mov al, byte ptr [rsi]
    add rsi, 0x2000
    dec rcx
    jnz touch
    inc r12
    lea rsi, [rip + msg]
    call puts
    mov rax, r12
    mov rbx, 10
    xor ecx, ecx
pd1:
    xor edx, edx
    div rbx
    push rdx
    inc rcx
    test rax, rax
    jnz pd1
pd2:
    pop rax
    add al, 0x30
    out 0xe9, al
    dec rcx
    jnz pd2
    mov al, 10
    out 0xe9, al
    mov rcx, 30000000
delay:
    dec rcx
    jnz delay
    jmp again
msg:
    .asciz "pass "
"""
    + PUTS
)

# name, memory (MiB), workload, touched gfns, written gfns
TOUCH = [
    ("t1", 16, "touch:pages=300,stride=3", range(0x100, 0x100 + 900, 3), range(0)),
    ("t2", 16, "touch:pages=500,write=1,start=0x180", range(0x180, 0x180 + 500), None),
    ("t3", 16, "touch:pages=64,stride=7,write=1", range(0x100, 0x100 + 64 * 7, 7), None),
    ("t4", 32, "touch:pages=1000,stride=5,start=0x300", range(0x300, 0x300 + 5000, 5), range(0)),
]
MIX_TOUCHED = range(0xE80, 0xE80 + 256)
MIX_WRITTEN = range(0xE80, 0xE80 + 256, 4)


def last_gfn(mem_mb: int) -> int:
    return (mem_mb << 8) - 1  # page tables are below 0x100 for these sizes


def expected_heat(first: int, last: int, hot: set[int], owned: set[int]) -> str:
    """The heat line the test expects, computed the slow, obvious way."""
    n = last - first + 1
    cols = []
    for c in range(64):
        gfns = [g for g in range(first, last + 1) if (g - first) * 64 // n == c]
        own = sum(1 for g in gfns if g in owned)
        win = sum(1 for g in gfns if g in hot and g in owned)
        if win == 0:
            cols.append(" ")
        else:
            r = win / own
            cols.append("." if r < 0.25 else ":" if r < 0.5 else "o" if r < 0.75 else "#")
    return "".join(cols)


def host_config(tmp) -> str:
    mix = tmp / "mix.S"
    mix.write_text(MIX)
    doms = [(name, mem, wl) for name, mem, wl, _, _ in TOUCH] + [("mix", 16, f"asm:{mix}")]
    text = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "256M"\n'
    for name, mem, wl in doms:
        text += f'\n[[domain]]\nname = "{name}"\nmemory = {mem}\nvcpus = 1\nworkload = "{wl}"\n'
    path = tmp / "host.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scan")
    (tmp / "loop.S").write_text(LOOP)
    with serve(*HOST_FILES, "--config", host_config(tmp), wait=True) as host:
        with Console.open(host.urls["telnet"], timeout=30) as c:
            c.expect_exact("root@dom0:~# ")
            c.tmp = tmp
            wait_dmesg(c, ["(d1) touch done 300", "(d2) touch done 500", "(d3) touch done 64"])
            wait_dmesg(c, ["(d4) touch done 1000", "(d5) mix done"])
            yield c


def wait_dmesg(con: Console, needles: list[str], timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while True:
        text = con.run("xl dmesg")
        if all(n in text for n in needles):
            return text
        if time.monotonic() > end:
            raise AssertionError(f"{needles} not in dmesg:\n{text[-2000:]}")
        time.sleep(0.2)


def create(con: Console, name: str, workload: str) -> None:
    cfg = con.tmp / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = 16\nvcpus = 1\nworkload = "{workload}"\n')
    con.run(f"xl create -q {cfg}", check=True)


def U(con: Console, *args: str) -> dict:
    out = con.run("xl debug-keys U " + " ".join(args))
    assert con.exit_status == 0
    lines = out.splitlines()
    assert lines[0] == "(XEN) 'U' pressed -> scanning accessed pages", out
    return parse_report(out)


def test_touch_workloads_exact_counts_and_heat(con):
    for domid, (_, mem, _, touched, written) in enumerate(TOUCH, start=1):
        written = touched if written is None else written
        last = last_gfn(mem)
        r = U(con, f"d{domid}", f"0x100-{last:#x}")[domid]
        pages = last - 0x100 + 1
        assert r["pages"] == pages
        assert r["accessed"] == len(touched)
        assert r["dirty"] == len(written)
        assert r["window"] == len(touched)
        assert r["never"] == pages - len(touched)
        assert (r["first"], r["last"]) == (0x100, last)
        assert r["heat"] == expected_heat(0x100, last, set(touched), set(range(0x100, last + 1)))
    r = U(con, "d5", "0x100-0xfff")[5]
    assert (r["pages"], r["accessed"], r["dirty"], r["window"], r["never"]) == (
        3840,
        256,
        64,
        256,
        3840 - 256,
    )
    # Without a range: the whole P2M, so the kernel, stack and start-info pages count too,
    # and the shared_info frame the kernel's balloon driver mapped at gfn 0x0e (4096 + 1).
    whole = U(con, "d1")[1]
    assert whole["pages"] == 4097 and whole["accessed"] > 300 and whole["first"] == 0
    # Without arguments: every guest, in domid order, and not dom0 (it is not shadowed).
    allr = U(con)
    assert sorted(allr) == [1, 2, 3, 4, 5]
    assert allr[3] == U(con, "d3")[3]


def test_args_prompt_on_the_serial_line(con):
    out = con.debug_key("U", "d3", "0x100-0x2ff")
    r = parse_report(out)[3]
    assert out.splitlines()[0] == "(XEN) 'U' pressed -> scanning accessed pages"
    touched = [g for g in TOUCH[2][3] if g <= 0x2FF]
    assert (r["pages"], r["accessed"], r["dirty"]) == (0x200, len(touched), len(touched))
    con.to_dom0()


def test_random_working_set_stays_inside(con):
    ws = 200
    create(con, "rnd", "random:ws=200,seed=3")
    domid = int(re.search(r"^rnd\s+(\d+)", con.run("xl list"), re.M).group(1))
    end = time.monotonic() + 20
    while U(con, f"d{domid}", "0x100-0xfff")[domid]["accessed"] == 0:  # first slices
        assert time.monotonic() < end
        time.sleep(0.1)
    seen = []
    for _ in range(5):
        time.sleep(0.3)
        r = U(con, f"d{domid}", "0x100-0xfff")[domid]
        outside = U(con, f"d{domid}", f"{0x100 + ws:#x}-0xfff")[domid]
        assert outside["accessed"] == 0 and outside["window"] == 0
        assert 0 < r["accessed"] <= ws and r["dirty"] == 0
        assert r["heat"][4:] == " " * 60  # 200 of 3840 pages at 60 a column: columns 0-3
        seen.append(r["accessed"])
    assert seen == sorted(seen)  # a lifetime count never goes down
    con.run("xl destroy rnd", check=True)


def test_window_after_Z(con):
    # Idle guests: Z, then nothing in the arena is accessed in the new window.
    z = con.run("xl debug-keys Z d1")
    assert z.splitlines()[0] == "(XEN) 'Z' pressed -> resetting accessed-page window"
    assert re.fullmatch(
        r"\(XEN\) d1 window reset: A cleared in \d+ L1 shadows?, 1 vCPU TLB flushed",
        z.splitlines()[1],
    )
    r = U(con, "d1", "0x100-0xfff")[1]
    assert (r["accessed"], r["window"], r["never"]) == (300, 0, 3540)
    assert r["heat"] == " " * 64
    con.run("xl debug-keys Z")  # every guest
    for domid in (2, 3, 5):
        r = U(con, f"d{domid}", "0x100-0xfff")[domid]
        assert r["window"] == 0 and r["accessed"] > 0

    # A guest that touches the same 100 pages in numbered passes: pause it, Z, U, unpause.
    create(con, "loop", f"asm:{con.tmp / 'loop.S'}")
    domid = int(re.search(r"^loop\s+(\d+)", con.run("xl list"), re.M).group(1))
    wait_dmesg(con, [f"(d{domid}) pass 2\n"])
    con.run("xl pause loop", check=True)
    con.run(f"xl debug-keys Z d{domid}", check=True)
    r = U(con, f"d{domid}", "0x100-0xfff")[domid]
    assert (r["accessed"], r["dirty"], r["window"]) == (100, 0, 0)
    k = max(map(int, re.findall(rf"^\(d{domid}\) pass (\d+)$", con.run("xl dmesg"), re.M)))
    con.run("xl unpause loop", check=True)
    # pass k+1 may have started before the pause; pass k+2 ran wholly after Z.
    wait_dmesg(con, [f"(d{domid}) pass {k + 2}\n"])
    r = U(con, f"d{domid}", "0x100-0xfff")[domid]
    assert (r["pages"], r["accessed"], r["dirty"], r["window"]) == (3840, 100, 0, 100)
    con.run("xl destroy loop", check=True)


def test_blow_tables_balloon_and_destroy(con):
    before = {d: U(con, f"d{d}", "0x100-0xfff")[d] for d in (1, 2, 3, 5)}
    out = con.run("xl debug-keys S")
    assert "(XEN) 'S' pressed -> blowing all shadow tables" in out
    for d, r in before.items():
        after = U(con, f"d{d}", "0x100-0xfff")[d]
        assert (after["accessed"], after["dirty"], after["pages"]) == (
            r["accessed"],
            r["dirty"],
            r["pages"],
        )
    # `xl mem-set` only sets the target (libxl_mem.c:180-330): d5 is an `asm:` guest with no
    # balloon driver, so it keeps every frame and the scan is unchanged. (The scan of a
    # ballooned-out range is tests/e2e/test_walk_hexdump.py's, after the memory model's
    # decrease_reservation.)
    con.run("xl mem-set mix 15", check=True)
    r = U(con, "d5", "0x100-0xfff")[5]
    b = before[5]
    assert (r["pages"], r["accessed"], r["dirty"]) == (b["pages"], b["accessed"], b["dirty"])
    assert r["pages"] == 3840
    con.run("xl destroy t3", check=True)
    allr = U(con)
    assert sorted(allr) == [1, 2, 4, 5]
    out = con.run("xl debug-keys U d3")
    assert out == "(XEN) 'U' pressed -> scanning accessed pages\n(XEN) 'U': no domain d3\n"


BAD = [
    ("U d99", "'U': no domain d99"),
    ("U d1 0x200-0x100", "'U': reversed gfn range 0x200-0x100"),
    ("U d1 garbage", "'U': bad gfn range 'garbage' (expected GFN_FIRST-GFN_LAST)"),
    ("U d1 0x100-zz", "'U': bad gfn 'zz' (expected a number, 0x... for hex)"),
    ("U xyz", "'U': bad domain 'xyz' (expected dN, e.g. d1)"),
    ("U d0", "'U': d0 is not a shadowed guest: no access record"),
    ("U d1 0x0-0xff extra", "'U': too many arguments (usage: U [dN [GFN_FIRST-GFN_LAST]])"),
    ("Z d42", "'Z': no domain d42"),
    ("X 0x40000", "'X': mfn 0x40000 is past the end of RAM (last mfn 0x3ffff)"),
    ("X 0x3ffff 2", "'X': mfns 0x3ffff-0x40000 run past the end of RAM (last mfn 0x3ffff)"),
    # (a 16M guest's RAM ends at gfn 0x1000: it is laid out around the hole at gfn 0x0e)
    ("X d1 0x1001", "'X': d1 gfn 0x1001 is not populated"),
    ("X", "'X': what to dump? (usage: X MFN [PAGES] or X dN GFN [PAGES])"),
    ("X 0x100 0", "'X': page count must be at least 1"),
    ("W", "'W': which domain? (usage: W dN [VADDR])"),
    ("W d0", "'W': d0 has no shadow pagetables (not a shadowed guest)"),
    ("W d1 0x800000000000", "'W': non-canonical virtual address 0x800000000000"),
    ("W d1 nope", "'W': bad virtual address 'nope' (expected a number, 0x... for hex)"),
]


@pytest.mark.parametrize("cmd,err", BAD, ids=[c for c, _ in BAD])
def test_bad_arguments_one_error_line(con, cmd, err):
    out = con.run(f"xl debug-keys {cmd}")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"(XEN) '{cmd[0]}' pressed -> "), out
    assert lines[1] == f"(XEN) {err}"
