"""64-bit PV guests (emu/pv/): XTF's pv64 microkernels, unmodified, on the emulated Xen.

Needs the Xen Test Framework at ../shared/xtf (relative to the repository root) and its
build script ../shared/xtf-build.sh; without them every test here is skipped with one reason.
Xen's formats checked here (RELEASE-4.22.0):
- `(dN) text` guest lines: drivers/char/console.c:798-810 (line buffer) and :1068-1078
  (guest_printk prefix `(d%d) `);
- the failed-probe line: tools/libs/guest/xg_dom_core.c:689 (xc_dom_find_loader) through
  xc_dom_panic_func (:76-92, "panic: %s:%d: %s"), then libxl_dom.c:589 and
  libxl_create.c:1653;
- the layout: tools/libs/guest/xg_dom_core.c:1112-1244, xg_dom_x86.c:138-268,380-448;
- start_info: xg_dom_x86.c:801-850; hypercall page: xen/arch/x86/pv/hypercall.c:120-152;
- adjusted L1 entries: xen/arch/x86/pv/mm.h:110-182; page types: asm/mm.h:22-62.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from pv_helpers import kernel, run_to_end, serial_lines, small_machine, xtf_tree

from emu.audit import audit
from emu.host import DomainSpec


@pytest.fixture
def xtf() -> Path:
    """XTF built once per process (skips without ../shared/xtf)."""
    return xtf_tree()


# ---- the ELF loader and the builder ----------------------------------------------------------


@pytest.mark.timeout(600)
def test_elf_notes_of_the_example(xtf):
    from emu.pv.elf import parse_kernel

    p = parse_kernel(Path(kernel(xtf, "example")).read_bytes())
    assert (p.virt_base, p.virt_entry, p.virt_hypercall) == (0, 0x100000, 0x106000)
    assert (p.virt_kstart, p.virt_kend) == (0x100000, 0x111000)
    assert (p.loader, p.xen_ver, p.guest_os) == ("generic", "xen-3.0", "XTF")
    assert (p.f_supported, p.f_required) == (0b10001, 0b1)


@pytest.mark.timeout(600)
def test_layout_and_start_info_of_the_example(xtf):
    """pv-abi §2.2: kernel 0x100-0x110, p2m 0x111 (0x40 pages), start_info 0x151, xenstore
    0x152, console 0x153, 5 page tables at 0x154, boot stack 0x159, [0, 4 MiB) mapped."""
    from emu.pv.build import layout
    from emu.pv.elf import parse_kernel

    lay = layout(parse_kernel(Path(kernel(xtf, "example")).read_bytes()), 128 << 8)
    got = (lay.p2m_pfn, lay.p2m_pages, lay.start_info_pfn, lay.store_pfn, lay.console_pfn)
    assert got == (0x111, 0x40, 0x151, 0x152, 0x153)
    assert (lay.pt_pfn, lay.nr_pt_frames, lay.bootstack_pfn) == (0x154, 5, 0x159)
    assert lay.virt_pgtab_end == 0x400000


def test_hypercall_page_stubs():
    from emu.pv.build import hypercall_page

    page = hypercall_page()
    assert page[0:14] == bytes.fromhex("514153b8000000000f05415b59c3")
    assert page[32 * 17 : 32 * 17 + 14] == bytes.fromhex("514153b8110000000f05415b59c3")
    assert page[32 * 23 : 32 * 23 + 11] == bytes.fromhex("51415350b8170000000f05")
    assert page[32 * 23 + 11 : 32 * 24] == b"\xcc" * 21
    assert len(page) == 4096 and page[-1] == 0xCC


@pytest.mark.timeout(600)
def test_built_guest_before_it_runs(xtf):
    """A paused domain: start_info, the pinned L4 and Xen's rewrite of the L1 entries."""
    from emu.mm.page_info import PGT_count_mask, PGT_pinned, PGT_type_mask, PGT_validated

    m, out = small_machine()
    try:
        spec = DomainSpec(name="ex", memory=128, type="pv", kernel=kernel(xtf, "example"))
        d = m.create_domain(spec, paused=True)
        mfn = lambda pfn: int(d.p2m[pfn])  # noqa: E731
        si = m.ram.read(mfn(0x151) << 12, 120)
        assert si[:15] == b"xen-3.0-x86_64\0"
        nr_pages, shared_info, flags = struct.unpack_from("<QQI", si, 32)
        assert (nr_pages, shared_info, flags) == (0x8000, d.xenpage_mfns[0] << 12, 0)
        store_mfn, store_port, cons_mfn, cons_port = struct.unpack_from("<QI4xQI", si, 56)
        assert (store_mfn, store_port, cons_mfn, cons_port) == (mfn(0x152), 1, mfn(0x153), 2)
        pt_base, nr_pt, mfn_list = struct.unpack_from("<QQQ", si, 88)
        assert (pt_base, nr_pt, mfn_list) == (0x154000, 5, 0x111000)
        ti = int(m.frames.type_info[mfn(0x154)])
        assert ti & PGT_type_mask == 4 << 61 and ti & PGT_pinned and ti & PGT_validated
        assert ti & PGT_count_mask == 2  # the pin and vCPU 0's CR3 (arch_set_info_guest)
        # Kernel page 0x100 was 0x23 (P|RW|A): Xen added U and bit 52 (guest kernel).
        l1 = mfn(0x157)
        assert int(m.ram.u64[(l1 << 9) + 0x100]) == (mfn(0x100) << 12) | 0x0010000000000027
        assert int(m.ram.u64[(l1 << 9) + 0x154]) == (mfn(0x154) << 12) | 0x0010000000000025
        assert audit(m) == []
        # `q` shows the vcpu_info the builder set up: events masked (xg_dom_x86.c:865-876;
        # common/keyhandler.c dump_domains prints upcall_pend/upcall_mask from vcpu_info).
        from keyhandlers.dispatch import handle_keypress

        mark = len(out)
        handle_keypress(m, "q")
        q = "".join(out[mark:]).replace("\r\n", "\n")
        assert "(XEN)     VCPU0: CPU0 [has=F] poll=0 upcall_pend=00 upcall_mask=01 \n" in q
        m.destroy_domain(d)
        assert audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_refused_kernels_print_libxenguest_lines(xtf, tmp_path):
    from emu.domctl import DomainError

    blob = bytearray(Path(kernel(xtf, "example")).read_bytes())
    bad_version = bytes(blob).replace(b"xen-3.0\0", b"xen-2.0\0")
    notes_gone = bytearray(blob)
    e_phoff, e_phnum = struct.unpack_from("<Q", blob, 32)[0], struct.unpack_from("<H", blob, 56)[0]
    for i in range(e_phnum):
        if struct.unpack_from("<I", blob, e_phoff + 56 * i)[0] == 4:  # PT_NOTE -> PT_NULL
            struct.pack_into("<I", notes_gone, e_phoff + 56 * i, 0)
    struct.pack_into("<H", notes_gone, 60, 0)  # e_shnum: no SHT_NOTE fallback either
    m, _ = small_machine()
    try:
        free = m.free_pages()
        for i, data in enumerate((b"not an elf", bad_version, bytes(notes_gone))):
            path = tmp_path / f"k{i}"
            path.write_bytes(data)
            with pytest.raises(DomainError) as e:
                m.create_domain(DomainSpec(name=f"bad{i}", memory=128, type="pv", kernel=str(path)))
            domid = i + 1
            assert str(e.value).split("\n") == [
                "xc: error: panic: xg_dom_core.c:689: xc_dom_find_loader: no loader found: "
                "Invalid kernel",
                "libxl: error: libxl_dom.c:589:libxl__build_dom: xc_dom_parse_image failed",
                f"libxl: error: libxl_create.c:1653:domcreate_rebuild_done: Domain {domid}:"
                "cannot (re-)build domain: -3",
            ]
        assert m.free_pages() == free and audit(m) == []
    finally:
        m.shutdown()


# ---- XTF tests run ---------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_xtf_example_in_process(xtf):
    m, out = small_machine()
    try:
        free = m.free_pages()
        d = run_to_end(
            m, DomainSpec(name="ex", memory=128, type="pv", kernel=kernel(xtf, "example"))
        )
        lines = [ln for ln in serial_lines(out) if ln.startswith("(d1) ")]
        assert lines == [
            "(d1) --- Xen Test Framework ---",
            "(d1) Environment: PV 64bit (Long mode 4 levels)",
            "(d1) Hello World",
            "(d1) Test result: SUCCESS",
        ]
        assert list(d.pv.console.lines) == [ln[5:] for ln in lines]  # the PV ring's copy
        assert d.shutdown_code == "-"  # SHUTDOWN_poweroff
        assert m.free_pages() == free and audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_xtf_selftest_in_process(xtf):
    m, out = small_machine()
    try:
        run_to_end(m, DomainSpec(name="st", memory=128, type="pv", kernel=kernel(xtf, "selftest")))
        lines = [ln[5:] for ln in serial_lines(out) if ln.startswith("(d1) ")]
        assert lines[2:] == [
            "XTF Selftests",
            "Test: Exception Table",
            "Test: Userspace execution",
            "Test: NULL unmapped",
            "Test: Unhandled Exception Hook",
            "Test: Exception Table Handler",
            "Test: Custom IDT entry",
            "Test: Driver basic initialisation",
            "Test: vsnprintf() with CRLF expansion",
            "Test: Xenstore read",  # the store port is interdomain: xenstored serves it
            "  Found domid 1",
            "Test result: SUCCESS",
        ]
        assert audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_xl_create_paused_then_unpause(xtf):
    """`xl create -p FILE` leaves the PV domain paused (nothing printed by the guest, `p` in
    xl list's state); `xl unpause` runs it to its verdict."""
    from xenconsole.dom0.shell import Dom0Shell

    m, out = small_machine()
    sh = Dom0Shell(m, lambda b: out.append(b.decode()))
    cfg = xtf / "tests" / "example" / "test-pv64-example.cfg"
    try:
        assert sh.run(f"xl create -p {cfg}") == 0
        time.sleep(0.2)
        d = m.find_domain("test-pv64-example")
        assert d is not None and d.state_chars() == "--p---"
        assert "(d1)" not in "".join(out)
        assert sh.run("xl unpause test-pv64-example") == 0
        end = time.monotonic() + 60
        while d.domid in m.domains and time.monotonic() < end:
            time.sleep(0.02)
        assert "(d1) Test result: SUCCESS" in "".join(out).replace("\r\n", "\n")
        assert audit(m) == []
    finally:
        m.shutdown()
