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

import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from emu.audit import audit
from emu.host import DomainSpec, HostConfig
from emu.machine import Machine

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
XTF = SHARED / "xtf"
XTF_MISSING = "../shared/xtf (the Xen Test Framework) is not present"


@pytest.fixture(scope="module")
def xtf(tmp_path_factory) -> Path:
    """XTF's microkernels, built once for this module; tests using it skip without XTF."""
    if not (XTF.is_dir() and (SHARED / "xtf-build.sh").is_file()):
        pytest.skip(XTF_MISSING)
    dest = tmp_path_factory.mktemp("xtf")
    r = subprocess.run(
        [str(SHARED / "xtf-build.sh"), str(dest)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return dest


def kernel(xtf: Path, name: str) -> str:
    return str(xtf / "tests" / name / f"test-pv64-{name}")


def small_machine() -> tuple[Machine, list[str]]:
    m = Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20)).boot_sync()
    out: list[str] = []
    m.console.sinks.append(lambda b: out.append(b.decode("latin-1")))
    return m, out


def run_to_end(m: Machine, spec: DomainSpec, timeout: float = 60):
    d = m.create_domain(spec)
    end = time.monotonic() + timeout
    while d.domid in m.domains and time.monotonic() < end:
        time.sleep(0.02)
    assert d.domid not in m.domains, "the guest did not finish"
    return d


def serial_lines(out: list[str]) -> list[str]:
    return "".join(out).replace("\r\n", "\n").split("\n")


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
    from emu.page_info import PGT_count_mask, PGT_pinned, PGT_type_mask, PGT_validated

    m, _ = small_machine()
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
def test_xl_create_on_the_serial_line(xtf, tmp_path):
    """`xl create -c FILE.cfg` typed on the serial line: the `(d1)` lines from Xen, then
    `xl console`'s copy from the PV ring, and the prompt once the domain is gone."""
    from xenconsole.testing import serve

    cfg = tmp_path / "host.toml"
    cfg.write_text('[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "256M"\n')
    xcfg = xtf / "tests" / "example" / "test-pv64-example.cfg"
    with serve("--config", str(cfg)) as host:
        s = socket.create_connection(host.address("tcp"))
        buf = bytearray()

        def wait(pattern: bytes, timeout: float = 60) -> None:
            end = time.monotonic() + timeout
            s.settimeout(0.2)
            while pattern not in buf and time.monotonic() < end:
                try:
                    buf.extend(s.recv(65536))
                except TimeoutError:
                    pass
            assert pattern in buf, bytes(buf[-1500:])

        wait(b"root@dom0:~# ")
        mark = len(buf)
        s.sendall(f"xl create -c {xcfg}\r".encode())
        wait(b"Test result: SUCCESS\r\nroot@dom0:~# ")
        text = buf[mark:].decode("latin-1").replace("\r\n", "\n")
        assert f"Parsing config from {xcfg}\n" in text
        xen = [ln for ln in text.split("\n") if ln.startswith("(d1) ")]
        assert xen == [
            "(d1) --- Xen Test Framework ---",
            "(d1) Environment: PV 64bit (Long mode 4 levels)",
            "(d1) Hello World",
            "(d1) Test result: SUCCESS",
        ]
        plain = [
            ln
            for ln in text.split("\n")
            if ln and not ln.startswith(("(", "root@", "Pars", "xl create"))
        ]
        assert plain == [ln[5:] for ln in xen]
        mark = len(buf)
        s.sendall(b"xl list\r")
        wait(b"root@dom0:~# ", 10)
        assert b"test-pv64-example" not in buf[mark:]
        s.close()


# ---- xenstored -------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_xenstored_ring_protocol(xtf):
    """Requests written into a paused domain's store ring as its guest would, answered by
    xenstored's rules (tools/xenstored/core.c:1058-1124 error names and echoed ids,
    :1239-1266 relative paths, :1390-1402 READ without NUL; watch.c:231-267 events)."""
    from emu.pv.xenstored import RSP_CONS, RSP_OFF, RSP_PROD

    m, _ = small_machine()
    try:
        spec = DomainSpec(name="xs", memory=128, type="pv", kernel=kernel(xtf, "example"))
        d = m.create_domain(spec, paused=True)
        conn = d.pv.xenstore
        ring = conn.ring
        mm = m.ram.mm
        prod = [0]
        cons = [0]

        def ask(mtype: int, body: bytes, req_id: int = 7, tx: int = 0) -> list:
            msg = struct.pack("<IIII", mtype, req_id, tx, len(body)) + body
            for b in msg:
                mm[ring + (prod[0] & 1023)] = b
                prod[0] += 1
            struct.pack_into("<I", mm, ring + 2052, prod[0])
            assert d.pv.evtchn.send(1) == 0  # EVTCHNOP_send on the store port
            out = []
            rp = struct.unpack_from("<I", mm, ring + RSP_PROD)[0]
            while cons[0] < rp:
                hdr = bytes(mm[ring + RSP_OFF + ((cons[0] + i) & 1023)] for i in range(16))
                t, rid, txid, n = struct.unpack("<IIII", hdr)
                data = bytes(mm[ring + RSP_OFF + ((cons[0] + 16 + i) & 1023)] for i in range(n))
                cons[0] += 16 + n
                out.append((t, rid, txid, data))
            struct.pack_into("<I", mm, ring + RSP_CONS, cons[0])
            return out

        assert ask(2, b"domid\0") == [(2, 7, 0, b"1")]
        assert ask(2, b"name\0", 9, 3) == [(2, 9, 3, b"xs")]
        assert ask(2, b"memory/target\0") == [(2, 7, 0, b"131072")]
        assert ask(2, b"nothing\0") == [(16, 7, 0, b"ENOENT\0")]
        assert ask(2, b"/local/domain/0/name\0") == [(16, 7, 0, b"EACCES\0")]
        assert ask(11, b"data/x\0hello") == [(11, 7, 0, b"OK\0")]
        assert ask(2, b"/local/domain/1/data/x\0") == [(2, 7, 0, b"hello")]
        assert ask(1, b"data\0") == [(1, 7, 0, b"x\0")]
        assert ask(4, b"data\0tok\0") == [(4, 7, 0, b"OK\0"), (15, 0, 0, b"data\0tok\0")]
        # A write fires the watches before its ack (core.c:1625-1626); a new watch acks
        # first, then fires once (watch.c:267-270).
        assert ask(11, b"data/y\0v") == [(15, 0, 0, b"data/y\0tok\0"), (11, 7, 0, b"OK\0")]
        assert ask(6, b"\0") == [(6, 7, 0, b"1\0")]
        assert ask(7, b"T\0", 7, 1) == [(7, 7, 1, b"OK\0")]
        assert ask(99, b"") == [(16, 7, 0, b"EINVAL\0")]
        m.destroy_domain(d)
        assert "/local/domain/1" not in m.pv.xenstore.nodes
        assert audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_xenstore_commands_in_dom0(xtf):
    """xenstore-ls/-read/-write (tools/xs-clients/xenstore_client.c: do_ls() indentation
    and `name = "value"`, warnx() "couldn't read path", the usage lines)."""
    from xenconsole.dom0.shell import Dom0Shell

    m, _ = small_machine()
    out: list[str] = []
    sh = Dom0Shell(m, lambda b: out.append(b.decode()))

    def run(cmd: str) -> tuple[int, str]:
        out.clear()
        rc = sh.run(cmd)
        return rc, "".join(out).replace("\r\n", "\n")

    try:
        d = m.create_domain(
            DomainSpec(name="ex", memory=128, type="pv", kernel=kernel(xtf, "example")), paused=True
        )
        store, cons = int(d.p2m[0x152]), int(d.p2m[0x153])
        assert run("xenstore-ls /local/domain/1") == (
            0,
            f'name = "ex"\nmemory = ""\n static-max = "131072"\n target = "131072"\n'
            f'domid = "1"\nstore = ""\n port = "1"\n ring-ref = "{store}"\ncpu = ""\n'
            f' 0 = ""\n  availability = "online"\nconsole = ""\n port = "2"\n'
            f' ring-ref = "{cons}"\n',
        )
        assert run("xenstore-write /local/domain/1/data/k v1") == (0, "")
        assert run("xenstore-read -p /local/domain/1/data/k name") == (
            0,
            "/local/domain/1/data/k: v1\nname: Domain-0\n",
        )
        assert run("xenstore-read nope") == (1, "xenstore-read: couldn't read path nope\n")
        assert run("xenstore-write a") == (
            1,
            "xenstore-write: Usage: xenstore-write [-h] [-R] key value [...]\n",
        )
        m.destroy_domain(d)
        assert run("xenstore-ls /local/domain/1") == (
            1,
            "xenstore-ls: xs_directory (/local/domain/1): No such file or directory\n",
        )
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_type_count_audit_catches_a_stray_reference(xtf):
    """The audit counts every reference a PV domain's frames hold (emu/pv/audit.py): clean
    for a built guest, and a type reference nobody holds is reported."""
    from emu.pv.audit import audit_pv

    m, _ = small_machine()
    try:
        spec = DomainSpec(name="ex", memory=128, type="pv", kernel=kernel(xtf, "example"))
        d = m.create_domain(spec, paused=True)
        assert audit(m) == [] and audit_pv(m) == []
        l1 = int(d.p2m[0x157])
        m.frames.type_info[l1] = int(m.frames.type_info[l1]) + 1  # a stray type reference
        assert audit_pv(m) == [
            f"d1: 1 frame(s) whose type count is not their references: {l1:#x}(2!=1)"
        ]
        assert audit(m) == [
            f"pv: d1: 1 frame(s) whose type count is not their references: {l1:#x}(2!=1)"
        ]
        m.frames.type_info[l1] = int(m.frames.type_info[l1]) - 1
        m.destroy_domain(d)
        assert audit(m) == []
    finally:
        m.shutdown()


# ---- bad guests --------------------------------------------------------------------------------

HC = 0x101000  # the test kernels' hypercall page


def pv_kernel(source: str) -> bytes:
    """A minimal PV kernel (emu/pv/elf.py write_pv_elf) from keystone-assembled source."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    from emu.pv.elf import write_pv_elf

    return write_pv_elf(bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(source, 0x100000)[0]))


def hypercall(nr: int) -> str:
    return f"mov rax, {HC + 32 * nr}\ncall rax\n"


# shutdown(reason in ebx): SCHEDOP_shutdown with the reason on the stack
SHUTDOWN = "sub rsp, 16\nmov dword ptr [rsp], ebx\nmov rdi, 2\nmov rsi, rsp\n" + hypercall(29)
MFN_OF_PFN = "mov rbx, [r15 + 104]\nmov rax, [rbx + rax * 8]\n"  # start_info.mfn_list[rax]


def expect_rc(rc: int) -> str:
    """Power off if rax == rc, else crash: the verdict is the domain's shutdown reason."""
    return f"mov rcx, {rc}\nxor ebx, ebx\nmov edx, 3\ncmp rax, rcx\ncmovne ebx, edx\n" + SHUTDOWN


@pytest.mark.timeout(600)
def test_bad_pv_guests_are_refused_or_crashed_alone(xtf, tmp_path):
    """Acceptance 4: a guest mapping another domain's frame, mapping its own L4 writable,
    loading a garbage CR3, jumping to a wild address: each refused (Xen's errno and its
    debug lines, arch/x86/mm.c:980,1006,1032,2952,3358) or crashed alone (traps.c
    pv_inject_event "Unhandled", show_page_walk; domain.c:1367 __domain_crash); the host
    then runs XTF's example, and every frame is back (audit clean)."""
    m, out = small_machine()
    try:
        free = m.free_pages()
        dom0_mfn = int(m.domains[0].p2m[0x10])
        foreign = (dom0_mfn << 12) | 0x63
        guests = {
            "foreign": "mov r15, rsi\nmov rdi, 0x300000\n"
            f"mov rsi, {foreign}\nmov rdx, 2\n" + hypercall(14) + expect_rc(-16),
            "l4rw": "mov r15, rsi\nmov rax, [r15 + 88]\nshr rax, 12\n" + MFN_OF_PFN
            + "shl rax, 12\nor rax, 0x63\nmov rsi, rax\nmov rdi, 0x300000\nmov rdx, 2\n"
            + hypercall(14) + expect_rc(-16),
            "cr3": "mov r15, rsi\nmov rax, 0x300\n" + MFN_OF_PFN + "mov r14, rax\n"
            "sub rsp, 32\nmov dword ptr [rsp], 5\nmov [rsp + 8], rax\nmov rdi, rsp\n"
            "mov rsi, 1\nxor edx, edx\nmov r10, 0x7ff0\n" + hypercall(26)
            + "mov rcx, -22\ncmp rax, rcx\njne done\nmov rax, r14\nshl rax, 12\nmov cr3, rax\n"
            "done: mov ebx, 0\n" + SHUTDOWN,
            "wild": "mov rax, 0xdead0000\njmp rax\n",
        }  # fmt: skip
        doms = {}
        for name, src in guests.items():
            path = tmp_path / name
            path.write_bytes(pv_kernel(src))
            out.clear()
            doms[name] = run_to_end(
                m, DomainSpec(name=name, memory=64, type="pv", kernel=str(path))
            )
            text = "".join(out).replace("\r\n", "\n")
            doms[name].text = text
            assert m.free_pages() == free and audit(m) == [], (name, text)
        d = doms["foreign"]
        assert d.shutdown_code == "-"  # -EBUSY came back
        pfn0 = f"{int(m.m2p[dom0_mfn]):05x}"
        assert (
            f"(XEN) arch/x86/mm.c:980:d1v0 pg_owner d1 l1e_owner d1, but real_pg_owner d0\n"
            f"(XEN) arch/x86/mm.c:1032:d1v0 Error getting mfn {dom0_mfn:05x} (pfn {pfn0}) from "
            f"L1 entry {foreign:016x} for l1e_owner d1, pg_owner d1\n"
        ) in d.text
        d = doms["l4rw"]
        assert d.shutdown_code == "-"
        assert (
            "arch/x86/mm.c:2952:d2v0 Bad type (saw 8c00000000000002 != exp e000000000000000)"
            in d.text
        )
        assert "(XEN) arch/x86/mm.c:1006:d2v0 Could not get page type PGT_writable_page\n" in d.text
        d = doms["cr3"]  # mmuext NEW_BASEPTR refused with -EINVAL, then `mov cr3` crashes it
        assert d.shutdown_code == "c"
        assert (
            "arch/x86/mm.c:2952:d3v0 Bad type (saw e400000000000001 != exp 8000000000000000)"
            in d.text
        )
        assert "arch/x86/mm.c:3358:d3v0 Error while installing new baseptr" in d.text
        assert "(XEN) d3v0 Unhandled: vec 13, #GP[0000]\n" in d.text
        assert "(XEN) Domain 3 (vcpu#0) crashed on cpu#" in d.text
        d = doms["wild"]
        assert d.shutdown_code == "c"
        assert (
            "(XEN) d4v0 Unhandled: vec 14, #PF[0010]\n(XEN) Pagetable walk from 00000000dead0000:\n"
            in d.text
        )
        assert "(XEN) Domain 4 (vcpu#0) crashed on cpu#" in d.text
        assert (
            "CONTEXT: pv guest (d4v0)" in d.text and "RIP:    e033:[<00000000dead0000>]" in d.text
        )
        out.clear()
        run_to_end(m, DomainSpec(name="ex", memory=128, type="pv", kernel=kernel(xtf, "example")))
        assert "(d5) Test result: SUCCESS" in "".join(out).replace("\r\n", "\n")
        assert m.free_pages() == free and audit(m) == []
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


def test_on_actions_other_than_destroy_are_refused():
    """xl_parse.c:1653-1675 for unknown actions; known ones other than destroy are not
    implemented here and say so (no lookalike of a Xen line)."""
    from emu.domctl import DomainError

    m = Machine(HostConfig(memory=1 << 30, cpus=2, dom0_mem=256 << 20))
    try:
        spec = DomainSpec(name="a", type="pv", kernel="/nonexistent", on_crash="explode")
        with pytest.raises(DomainError, match='^Unknown on_crash action "explode" specified$'):
            m.create_domain(spec)
        spec = DomainSpec(name="a", type="pv", kernel="/nonexistent", on_poweroff="preserve")
        with pytest.raises(
            DomainError, match='^on_poweroff="preserve": only "destroy" is implemented here$'
        ):
            m.create_domain(spec)
        assert audit(m) == []
    finally:
        m.shutdown()
