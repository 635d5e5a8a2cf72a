"""PV guests, continued: dom0's xenstored and xenstore commands, the type-count audit, bad
guests refused or crashed alone (xl's on_* actions: tests/emu/test_shutdown_actions.py).
Xen formats are cited per test."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pv_helpers import kernel, run_to_end, small_machine, xtf_tree

from emu.audit import audit
from emu.host import DomainSpec


@pytest.fixture
def xtf() -> Path:
    """XTF built once per process (skips without ../shared/xtf)."""
    return xtf_tree()


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
    from xenconsole.dom0.fs import Dom0Fs
    from xenconsole.dom0.shell import Dom0Shell

    m, _ = small_machine()
    out: list[str] = []
    sh = Dom0Shell(m, lambda b: out.append(b.decode()), Dom0Fs("/"))  # host paths

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
    """A minimal PV kernel (emu/pv/elf.py write_pv_elf) from source assembled at 0x100000."""
    from emu.asm import assemble
    from emu.pv.elf import write_pv_elf

    return write_pv_elf(assemble(source, 0x100000, 1 << 20))


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
def test_grant_map_and_unmap_keep_counts(xtf):
    """GNTTABOP_map_grant_ref of a domain's own grant (host + device), as its vCPU would ask:
    the PTE Xen writes (pv/grant_table.c grant_to_pte_flags + adjust_guest_l1e), the shared
    entry's GTF_reading|GTF_writing, counts the audit agrees with; unmap undoes all of it."""
    from emu.pv.grant_map import map_one, unmap_one

    m, _ = small_machine()
    try:
        spec = DomainSpec(name="gm", memory=128, type="pv", kernel=kernel(xtf, "example"))
        d = m.create_domain(spec, paused=True)
        v = d.vcpus[0]
        gt = d.pv.gnttab
        target = int(d.p2m[0x300])
        entry8 = (gt.shared[0] << 12) + 8 * 8
        m.ram.write(entry8, struct.pack("<HHI", 1, d.domid, target))  # GTF_permit_access
        op = struct.pack("<QIIHhIQ", 0x301000, 1 | 2, 8, 0x7FF0, 0, 0, 0)
        host_addr, flags, ref, dom, status, handle, dev = struct.unpack("<QIIHhIQ", map_one(v, op))
        assert (status, handle, dev) == (0, 0, target << 12)
        l1 = int(d.p2m[0x157])
        pte = int(m.ram.u64[(l1 << 9) + 0x301])
        # P|RW|A|D, NX, _PAGE_GNTTAB (bit 62), then U and _PAGE_GUEST_KERNEL (bit 52).
        assert pte == (target << 12) | 0x67 | (1 << 63) | (1 << 62) | (1 << 52)
        assert struct.unpack_from("<H", m.ram.mm, entry8)[0] == 1 | 8 | 16
        assert audit(m) == []
        assert unmap_one(v, 0x301000, target << 12, 0, 0) == 0
        assert int(m.ram.u64[(l1 << 9) + 0x301]) == 0
        assert struct.unpack_from("<H", m.ram.mm, entry8)[0] == 1
        assert unmap_one(v, 0x301000, 0, 0, 0) == -4  # GNTST_bad_handle: gone
        assert audit(m) == []
        m.destroy_domain(d)
        assert audit(m) == []
    finally:
        m.shutdown()


@pytest.mark.timeout(600)
def test_destroying_a_running_pv_domain_returns_every_frame(xtf):
    """`xl destroy` while XTF's msr test is bouncing #GPs: vCPU stopped, frames freed."""
    import time

    m, _ = small_machine()
    try:
        free = m.free_pages()
        for i in range(2):
            spec = DomainSpec(name=f"msr{i}", memory=128, type="pv", kernel=kernel(xtf, "msr"))
            d = m.create_domain(spec)
            time.sleep(0.3)
            m.destroy_domain(d)
            assert d.domid not in m.domains
            assert m.free_pages() == free and audit(m) == []
    finally:
        m.shutdown()
