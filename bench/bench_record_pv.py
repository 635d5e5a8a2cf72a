"""Key `U` for PV guests (emu/access/pv.py): a 64 GiB host with 10 GiB of 64-bit PV domUs,
beside a per-frame Python loop over the same frame table (same process, same counts).

    .venv/bin/python bench/bench_record_pv.py [--memory 64G] [--guests 5] [--guest-mib 2064]
                                              [--touch 100000] [--stride 4] [--repeat 15]

What is real: the host, the PV domains (`create_domain` with a PV kernel: the domain
builder, the frame table's page types, Unicorn running the kernel with CR3 = the guest's
own L4). Each guest gets a direct map of all its memory: the bench writes L1/L2/L3 tables
into the guest's own top frames (as a PV kernel writes them into pages it owns) and then
hooks the L3 into L4 slot 1 with `mod_entry` (emu/pv/mm.py, the code an `mmu_update`
hypercall runs), which validates the whole tree through Xen's type system (every L1 a
validated PGT_l1_page_table with a reference on every frame it maps). The guest kernel
then reads (even guests) or writes (odd guests) every `--stride`-th of `--touch` pages
through that map and blocks: the A/D bits are the ones the emulated MMU set.

The naive baseline walks every frame of the frame table in Python (owner, type, validated),
and for each of the domain's L1 tables every entry, and must give the same counts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from emu.asm import assemble  # noqa: E402
from emu.boot import boot_sync  # noqa: E402
from emu.host import DomainSpec, HostConfig, parse_size  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.pv.elf import write_pv_elf  # noqa: E402
from keyhandlers.access import (  # noqa: E402
    parse_report,
    reset_accessed_window,
    scan_accessed_pages,
)

HC = 0x101000
FLAG, START, STRIDE, WRITE = 0x100800, 0x100808, 0x100810, 0x100818
MAP_SLOT = 1  # L4 slot of the direct map: VA 0x8000000000 + pfn << 12
MAP_VA = MAP_SLOT << 39
KERNEL = f"""
wait:
    mov rcx, qword ptr [{FLAG}]
    test rcx, rcx
    jz wait
    mov rsi, qword ptr [{START}]
    mov rbx, qword ptr [{STRIDE}]
    mov rdx, qword ptr [{WRITE}]
touch:
    test rdx, rdx
    jnz wr
    mov al, byte ptr [rsi]
    jmp next
wr:
    mov byte ptr [rsi], cl
next:
    add rsi, rbx
    dec rcx
    jnz touch
block:
    mov rdi, 1
    xor esi, esi
    mov rax, {HC + 32 * 29}
    call rax
    jmp block
.org 0x800
    .quad 0, 0, 0, 0
"""
P, RW, A = 0x1, 0x2, 0x20
CHUNK = 1 << 20


class Sink(list):
    def __call__(self, line: str = "") -> None:
        self.append(line)


def direct_map(m, d) -> int:
    """Tables in the guest's top frames mapping every pfn (writable, except frames that are
    or become page tables: Xen refuses those writable), hooked into L4 slot MAP_SLOT by one
    validated update. Returns the number of L1 tables."""
    p2m = np.asarray(d.p2m).astype(np.uint64)
    n = p2m.size
    nl1 = -(-n // 512)
    nl2 = -(-nl1 // 512)
    tables = p2m[n - nl1 - nl2 - 1 :]
    l1s, l2s, l3 = tables[:nl1], tables[nl1 : nl1 + nl2], int(tables[-1])
    u64 = m.ram.u64.reshape(-1, 512)
    # Data pages writable, every frame that becomes a table (or was one) read-only.
    ti = m.frames.type_info[p2m.view(np.int64)].astype(np.uint64)
    typed = (ti >> np.uint64(61)) != np.uint64(0)
    typed = typed & ((ti >> np.uint64(61)) != np.uint64(7))  # not PGT_writable_page
    rw = np.where(typed, 0, RW).astype(np.uint64)
    rw[n - nl1 - nl2 - 1 :] = 0
    ent = (p2m << np.uint64(12)) | np.uint64(P) | rw  # A clear: set by the MMU on use
    ent = np.concatenate([ent, np.zeros(nl1 * 512 - n, dtype=np.uint64)])
    u64[l1s.view(np.int64)] = ent.reshape(nl1, 512)
    l2 = np.zeros(nl2 * 512, dtype=np.uint64)
    l2[:nl1] = (l1s << np.uint64(12)) | np.uint64(P | RW | A)
    u64[l2s.view(np.int64)] = l2.reshape(nl2, 512)
    u64[l3] = 0
    u64[l3, :nl2] = (l2s << np.uint64(12)) | np.uint64(P | RW | A)
    l4 = d.vcpus[0].guest_table
    with m.quiesce(d):
        rc = m.pv.mm.mod_entry(l4, MAP_SLOT, (l3 << 12) | P | RW | A, 4, d)
    assert rc == 0, rc
    return nl1


def naive_counts(m, doms) -> dict[int, tuple[int, int, int]]:
    """Per-frame Python loop: {domid: (pages, accessed, dirty)} from the frame table (owner,
    L1 type, validated) and every entry of every L1 table found, plus the record."""
    codes = {d.domid + 1: d.domid for d in doms}
    v = m.frames.v
    ti = m.frames.type_info
    ci = m.frames.count_info
    nr = m.ram.nr_frames
    l1s: dict[int, list[int]] = {d.domid: [] for d in doms}
    pages = dict.fromkeys(l1s, 0)
    for lo in range(0, nr, CHUNK):
        hi = min(nr, lo + CHUNK)
        owners, types, counts = v[lo:hi].tolist(), ti[lo:hi].tolist(), ci[lo:hi].tolist()
        for i in range(hi - lo):
            dom = codes.get(owners[i])
            if dom is None or (counts[i] >> 58) & 3 or (counts[i] >> 62) & 1:
                continue  # not the domain's, not in use, or Xen's page for it (xen_heap)
            pages[dom] += 1
            t = types[i]
            if t >> 61 == 1 and (t >> 58) & 1:
                l1s[dom].append(lo + i)
    res = {}
    u64 = m.ram.u64
    rec = m.access
    for d in doms:
        acc, dirty = set(), set()
        for f in l1s[d.domid]:
            for e in u64[f << 9 : (f + 1) << 9].tolist():
                if e & 0x21 == 0x21:
                    acc.add((e >> 12) & 0xFFFFFFFFFF)
                if e & 0x41 == 0x41:
                    dirty.add((e >> 12) & 0xFFFFFFFFFF)
        p2m = set(np.asarray(d.p2m).tolist())
        acc |= {f for f in p2m if rec.accessed[f]}
        dirty |= {f for f in p2m if rec.written[f]}
        res[d.domid] = (pages[d.domid], len(acc & p2m), len(dirty & p2m))
    return res


def _u(m, args=()) -> list[str]:
    out = Sink()
    scan_accessed_pages(m, out, args)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="64G")
    ap.add_argument("--guests", type=int, default=5)
    ap.add_argument("--guest-mib", type=int, default=2064)
    ap.add_argument("--touch", type=int, default=100000)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--naive-repeat", type=int, default=2)
    args = ap.parse_args()
    t = time.perf_counter()
    m = boot_sync(Machine(HostConfig(memory=parse_size(args.memory), cpus=2, dom0_mem=1 << 30)))
    t_boot = time.perf_counter() - t
    tmp = tempfile.mkdtemp()
    kpath = os.path.join(tmp, "kernel")
    with open(kpath, "wb") as f:
        f.write(write_pv_elf(assemble(KERNEL, 0x100000, 1 << 20)))
    doms, nl1 = [], 0
    t = time.perf_counter()
    for i in range(args.guests):
        spec = DomainSpec(name=f"pv{i}", memory=args.guest_mib, type="pv", kernel=kpath)
        doms.append(m.create_domain(spec))
    t_create = time.perf_counter() - t
    t = time.perf_counter()
    for d in doms:
        nl1 += direct_map(m, d)
    t_map = time.perf_counter() - t
    t = time.perf_counter()
    for i, d in enumerate(doms):
        ram = m.ram.u64
        words = {FLAG: args.touch, START: MAP_VA + (0x1000 << 12), STRIDE: args.stride << 12,
                 WRITE: i % 2}  # fmt: skip
        mfn = int(d.p2m[0x100])
        for va, val in sorted(words.items(), key=lambda kv: kv[0] != FLAG):
            ram[(mfn << 9) + ((va & 0xFFF) >> 3)] = val
    while not all(d.vcpus[0].blocked for d in doms):
        time.sleep(0.1)
    t_touch = time.perf_counter() - t
    times, cpu = [], []
    for _ in range(args.repeat):
        c, t = time.process_time(), time.perf_counter()
        out = _u(m)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    report = parse_report("\n".join("(XEN) " + x for x in out))
    naive_w, naive_c = [], []
    for _ in range(args.naive_repeat):
        c, t = time.process_time(), time.perf_counter()
        naive = naive_counts(m, doms)
        naive_w.append(time.perf_counter() - t)
        naive_c.append(time.process_time() - c)
    for d in doms:
        r = report[d.domid]
        assert (r["pages"], r["accessed"], r["dirty"]) == naive[d.domid], (r, naive[d.domid])
    z_times = []
    for _ in range(3):
        t = time.perf_counter()
        reset_accessed_window(m, Sink(), ())
        z_times.append(time.perf_counter() - t)
    after = parse_report("\n".join("(XEN) " + x for x in _u(m)))
    assert all(after[d.domid]["window"] == 0 for d in doms)
    pages = sum(report[d.domid]["pages"] for d in doms)
    best, med = min(times), statistics.median(times)
    nb, nm = min(naive_w), statistics.median(naive_w)
    print(
        f"bench_record_pv: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"host {args.memory} ({m.ram.nr_frames} frames): boot {t_boot:.1f} s")
    print(
        f"{args.guests} PV guests x {args.guest_mib} MiB = {pages} pages "
        f"({pages / 262144:.2f} GiB), created in {t_create:.1f} s; direct maps "
        f"({nl1} validated L1 tables) in {t_map:.1f} s; touching {t_touch:.1f} s"
    )
    for d in doms:
        r = report[d.domid]
        print(
            f"  d{d.domid} pages={r['pages']} accessed={r['accessed']} dirty={r['dirty']} "
            f"window={r['window']} never={r['never']}"
        )
    print(
        f"U (all PV guests, {len(out)} lines): first {times[0] * 1e3:.1f} ms, best "
        f"{best * 1e3:.1f} ms, median {med * 1e3:.1f} ms of {args.repeat}; CPU best "
        f"{min(cpu) * 1e3:.1f} ms, median {statistics.median(cpu) * 1e3:.1f} ms"
    )
    print(
        f"Z (all PV guests: fold, clear A in {nl1} L1 tables, flush): best "
        f"{min(z_times) * 1e3:.1f} ms, median {statistics.median(z_times) * 1e3:.1f} ms"
    )
    print(
        f"naive per-frame Python loop ({m.ram.nr_frames} frames + {nl1 * 512} L1 entries), "
        f"{args.naive_repeat} runs: best {nb:.2f} s, median {nm:.2f} s, CPU median "
        f"{statistics.median(naive_c):.2f} s; same counts"
    )
    print(
        f"speed-up: {nb / best:.0f}x (best vs best), {nm / med:.0f}x (median vs median), "
        f"{statistics.median(naive_c) / statistics.median(cpu):.0f}x (CPU medians)"
    )
    m.shutdown()


if __name__ == "__main__":
    main()
