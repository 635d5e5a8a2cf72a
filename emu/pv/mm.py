"""PV memory management with Xen's page types (xen/arch/x86/mm.c, pv/mm.h).

A PV guest's page tables hold machine frame numbers and are walked by the CPU as they are
(direct paging): Unicorn's CR3 is the guest's own L4. What keeps the guest inside its own
memory is the type system on `page_info.type_info`:

- a frame used as an L1..L4 table carries PGT_lN_page_table, validated (every present entry
  checked, and the frames it references counted) before the CPU may walk it;
- a frame mapped writable carries PGT_writable_page, one type reference per RW mapping;
- the type may change only while the type count is 0, so a page table is never mapped
  writable and a writable frame never becomes a page table;
- a pinned table holds one extra type reference until unpinned.

References: `get_page_from_l1e` takes a general reference (count_info) and, for RW, a
writable type reference; an L2/L3/L4 entry takes a general and a type reference of the next
level down. When a table's last type reference goes, its entries' references are dropped and
it loses PGT_validated (`free_page_type`). Xen rewrites guest entries as 64-bit PV needs
(`adjust_guest_l*e`): _PAGE_USER everywhere, bit 52 (_PAGE_GUEST_KERNEL) on kernel L1
mappings; in every validated L4, slots 256..271 belong to Xen (`init_xen_l4_slots`).
Errors are negative Xen errno values.
"""

from __future__ import annotations

from emu.mm.page_info import (
    PGC_count_mask,
    PGC_state,
    PGC_state_inuse,
    PGT_count_mask,
    PGT_l1_page_table,
    PGT_l4_page_table,
    PGT_pinned,
    PGT_type_mask,
    PGT_validated,
    PGT_writable_page,
    owner_code,
)
from emu.pv.linear_pt import get_linear, is_linear, put_linear

EPERM, ENOENT, ESRCH, EFAULT, EBUSY, EINVAL, ENOSYS = 1, 2, 3, 14, 16, 22, 38
_PAGE_PRESENT, _PAGE_RW, _PAGE_USER, _PAGE_PWT, _PAGE_PCD = 0x1, 0x2, 0x4, 0x8, 0x10
_PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PSE, _PAGE_GLOBAL = 0x20, 0x40, 0x80, 0x100
_PAGE_NX = 1 << 63
_PAGE_GUEST_KERNEL = 1 << 52  # flag bit 12 in Xen's 24-bit form (asm/x86_64/page.h)
_PAGE_GNTTAB = 1 << 62
ADDR_MASK = 0x000FFFFFFFFFF000
# base_disallow_mask (mm.c:283): everything but P RW U A D AVAIL AVAIL_HIGH NX, i.e. PWT,
# PCD, PSE/PAT and G; L1 additionally refuses _PAGE_GNTTAB but allows G (mm.c:158-178).
BASE_DISALLOW = _PAGE_PWT | _PAGE_PCD | _PAGE_PSE | _PAGE_GLOBAL
L1_DISALLOW = (BASE_DISALLOW & ~_PAGE_GLOBAL) | _PAGE_GNTTAB
# Flags whose change needs no new references (the "fast path", mm.c:2135-2148,2213-2221).
L1_FASTPATH = _PAGE_NX | 0xE00 | (0x7FF << 52) | _PAGE_GLOBAL | _PAGE_DIRTY | _PAGE_ACCESSED
L1_FASTPATH |= _PAGE_USER
# With linear page tables (CONFIG_PV_LINEAR_PT, Xen's default) an L2..L4 entry's RW is no
# fast-path flag either: a read-only entry may be a linear one (mm.c:2139-2149).
LN_FASTPATH = L1_FASTPATH
ROOT_PAGETABLE_FIRST_XEN_SLOT, ROOT_PAGETABLE_LAST_XEN_SLOT = 256, 271
LEVEL_TYPE = {1: PGT_l1_page_table, 2: 2 << 61, 3: 3 << 61, 4: PGT_l4_page_table}
TYPE_LEVEL = {v: k for k, v in LEVEL_TYPE.items()}
HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END = 0xFFFF800000000000, 0xFFFF880000000000


class PVMM:
    """Page-type operations of one machine (one per machine, shared by its PV domains)."""

    def __init__(self, machine, xen_l4_slots) -> None:
        self.machine = machine
        self.ft = machine.frames
        self.u64 = machine.ram.u64
        self.xen_l4_slots = xen_l4_slots  # fn(dom) -> {slot: entry}
        self.linear: dict[int, int] = {}  # linear_pt_count (emu/pv/linear_pt.py), non-zero

    # ---- general and type references ----------------------------------------------------

    def owned(self, mfn: int, dom) -> bool:
        ft = self.ft
        if not 0 <= mfn < ft.nr_frames:
            return False
        ci = int(ft.count_info[mfn])
        return ci & PGC_state == PGC_state_inuse and int(ft.v[mfn]) == owner_code(dom.domid)

    def owner(self, mfn: int) -> int | None:
        """page_get_owner() of an in-use frame with references (None: free or Xen's own)."""
        ft = self.ft
        ci = int(ft.count_info[mfn])
        if ci & PGC_state != PGC_state_inuse or not ci & PGC_count_mask or not int(ft.v[mfn]):
            return None
        return int(ft.v[mfn]) - 1

    def get_page(self, mfn: int, dom, quiet: bool = False) -> bool:
        """get_page() (mm.c:2560-2580): a general reference on a frame `dom` owns."""
        ft = self.ft
        if self.owned(mfn, dom):
            ci = int(ft.count_info[mfn])
            if 0 < ci & PGC_count_mask < PGC_count_mask - 1:
                ft.count_info[mfn] = ci + 1
                return True
        if not quiet and not dom.is_dying and 0 <= mfn < ft.nr_frames:
            od = self.owner(mfn)
            ods = "NULL" if od is None else f"d{od}"
            self.gprintk(
                f"Error mfn {mfn:05x}: rd=d{dom.domid} od={ods} "
                f"caf={int(ft.count_info[mfn]) - (od is not None):08x} "
                f"taf={int(ft.type_info[mfn]):016x}",
                dom,
            )
        return False

    def put_page(self, mfn: int) -> None:
        ci = int(self.ft.count_info[mfn])
        if ci & PGC_count_mask:
            self.ft.count_info[mfn] = ci - 1

    def get_page_type(self, mfn: int, type_: int, dom) -> int:
        """_get_page_type() (mm.c:2890-3020): 0, or -EINVAL for a type clash or a table
        that does not validate."""
        ft = self.ft
        ti = int(ft.type_info[mfn])
        count = ti & PGT_count_mask
        if count:
            if ti & PGT_type_mask != type_:
                seen = TYPE_LEVEL.get(ti & PGT_type_mask)
                if seen is not None and TYPE_LEVEL.get(type_) == seen - 1:
                    return -EINVAL  # looks like a recursive mapping: silently refused
                self.gdprintk(
                    2952,
                    f"Bad type (saw {ti:016x} != exp {type_:016x}) for mfn {mfn:05x} "
                    f"(pfn {self.m2p_str(mfn)})",
                    dom,
                )
                return -EINVAL
            if count + 1 >= PGT_count_mask:
                self.gdprintk(2911, f"Type count overflow on mfn {mfn:05x}", dom)
                return -EINVAL
            ft.type_info[mfn] = ti + 1
            return 0
        if ti & PGT_type_mask == type_ and ti & PGT_validated:
            ft.type_info[mfn] = ti + 1
            return 0
        # A new type (or a table to validate again): count 1, validated once checked.
        self.linear.pop(mfn, None)  # mm.c:3129
        ft.type_info[mfn] = type_ | 1
        if type_ in TYPE_LEVEL:
            rc = self.validate(mfn, TYPE_LEVEL[type_], dom)
            if rc:
                self.gdprintk(
                    2659,
                    f"Error while validating mfn {mfn:05x} (pfn {self.m2p_str(mfn)}) for type "
                    f"{type_:016x}: caf={int(ft.count_info[mfn]):08x} "
                    f"taf={int(ft.type_info[mfn]):016x}",
                    dom,
                )
                ft.type_info[mfn] = ti & ~(PGT_count_mask | PGT_validated | PGT_pinned)
                return rc
            self.machine.pv.flush_domain_tlbs(dom)  # no stale writable mapping survives
        ft.type_info[mfn] = type_ | PGT_validated | 1
        return 0

    def put_page_type(self, mfn: int, dom) -> None:
        ft = self.ft
        ti = int(ft.type_info[mfn])
        if ti & PGT_count_mask == 0:
            return
        ti -= 1
        if ti & PGT_count_mask == 0 and ti & PGT_type_mask in TYPE_LEVEL and ti & PGT_validated:
            ft.type_info[mfn] = ti & ~PGT_validated  # free_page_type(): drop what it holds
            self.devalidate(mfn, TYPE_LEVEL[ti & PGT_type_mask], dom)
            return
        ft.type_info[mfn] = ti

    def get_page_and_type(self, mfn: int, type_: int, dom) -> int:
        if not self.get_page(mfn, dom):
            return -EINVAL
        rc = self.get_page_type(mfn, type_, dom)
        if rc:
            self.put_page(mfn)
        return rc

    def put_page_and_type(self, mfn: int, dom) -> None:
        self.put_page_type(mfn, dom)
        self.put_page(mfn)

    # ---- entries ----------------------------------------------------------------------------

    def get_page_from_l1e(self, e: int, dom) -> int:
        """get_page_from_l1e() (mm.c:840-1040) for a PV domU without I/O memory rights."""
        mfn = (e & ADDR_MASK) >> 12
        ft = self.ft
        if not 0 <= mfn < ft.nr_frames:
            if mfn != ADDR_MASK >> 12:
                self.gdprintk(
                    889, f"d{dom.domid} non-privileged attempt to map MMIO space {mfn:05x}", dom
                )
                return -EPERM
            return -EINVAL
        real = self.owner(mfn)
        if real != dom.domid:
            self.gdprintk(
                980,
                f"pg_owner d{dom.domid} l1e_owner d{dom.domid}, but real_pg_owner "
                f"d{real if real is not None else -1}",
                dom,
            )
            return self._could_not_pin(mfn, e, dom)
        if not self.get_page(mfn, dom, quiet=True):
            return self._could_not_pin(mfn, e, dom)
        if e & _PAGE_RW and self.get_page_type(mfn, PGT_writable_page, dom):
            self.gdprintk(1006, "Could not get page type PGT_writable_page", dom)
            self.put_page(mfn)
            return self._could_not_pin(mfn, e, dom)
        return 0

    def _could_not_pin(self, mfn: int, e: int, dom) -> int:
        self.gdprintk(
            1032,
            f"Error getting mfn {mfn:05x} (pfn {self.m2p_str(mfn)}) from L1 entry {e:016x} "
            f"for l1e_owner d{dom.domid}, pg_owner d{dom.domid}",
            dom,
        )
        return -EBUSY

    def put_page_from_l1e(self, e: int, dom) -> None:
        mfn = (e & ADDR_MASK) >> 12
        if not e & _PAGE_PRESENT or not 0 <= mfn < self.ft.nr_frames:
            return
        if e & _PAGE_RW:
            self.put_page_type(mfn, dom)
        self.put_page(mfn)

    def get_page_from_lNe(self, e: int, level: int, dom, table: int) -> int:
        """get_page_from_l{2,3,4}e() (mm.c:1118-1183): the next level's table, else a
        linear mapping of `table`'s own level (emu/pv/linear_pt.py)."""
        mfn = (e & ADDR_MASK) >> 12  # get_page() refuses a frame that does not exist
        rc = self.get_page_and_type(mfn, LEVEL_TYPE[level - 1], dom)
        if rc == -EINVAL and get_linear(self, e, level, table, dom):
            rc = 0
        return rc

    @staticmethod
    def adjust(e: int, level: int) -> int:
        """adjust_guest_l*e() for 64-bit PV (pv/mm.h:110-182)."""
        if not e & _PAGE_PRESENT:
            return e
        if level == 1:
            if not e & _PAGE_USER:
                return e | _PAGE_USER | _PAGE_GUEST_KERNEL
            if not e & _PAGE_GUEST_KERNEL:
                return e | _PAGE_USER | _PAGE_GLOBAL
            return e
        if level == 4:
            return e | _PAGE_ACCESSED | _PAGE_USER
        return e | _PAGE_USER

    # Where each level's "Bad Ln flags" is printed: validating a table / updating an entry.
    FLAGS_LINE = {(1, False): 866, (2, False): 1126, (3, False): 1149, (4, False): 1173}
    FLAGS_LINE.update({(1, True): 2170, (2, True): 2286, (3, True): 2348, (4, True): 2410})

    def check_flags(self, e: int, level: int, dom, mod: bool = False) -> int:
        bad = e & (L1_DISALLOW if level == 1 else BASE_DISALLOW)
        if bad:
            flags = ((bad >> 40) & 0xFFF000) | (bad & 0xFFF)
            text = f"{flags:#x}" if level == 1 else f"{flags:x}"
            self.gdprintk(self.FLAGS_LINE[(level, mod)], f"Bad L{level} flags {text}", dom)
            return -EINVAL
        return 0

    # ---- validation ------------------------------------------------------------------------

    def _slots(self, level: int):
        if level == 4:
            return [i for i in range(512) if not 256 <= i <= 271]
        return range(512)

    PROMOTE_LINE = {1: 1358, 2: 1466, 3: 1602, 4: 1793}

    def validate(self, mfn: int, level: int, dom) -> int:
        """promote_lN_table(): check and reference every present entry, or undo and fail."""
        t = self.u64[mfn << 9 : (mfn + 1) << 9]
        done: list[tuple[int, int]] = []
        for i in self._slots(level):
            e = int(t[i])
            if not e & _PAGE_PRESENT:
                continue
            rc = self.check_flags(e, level, dom)
            if not rc:
                rc = (
                    self.get_page_from_l1e(e, dom)
                    if level == 1
                    else self.get_page_from_lNe(e, level, dom, mfn)
                )
            if rc:
                self.gdprintk(
                    self.PROMOTE_LINE[level],
                    f"Failure {rc} in promote_l{level}_table: slot {i:#x}",
                    dom,
                )
                for j, old in done:
                    self._put_entry(old, level, dom, mfn)
                    t[j] = old
                return rc
            done.append((i, e))
            t[i] = self.adjust(e, level)
        if level == 4:
            for slot, entry in self.xen_l4_slots(dom).items():
                t[slot] = entry
        return 0

    def _put_entry(self, e: int, level: int, dom, table: int) -> None:
        """put_page_from_lNe() (mm.c:1280-1313): a self-map holds nothing; dropping a linear
        entry also drops its linear_pt_count marks."""
        if level == 1:
            self.put_page_from_l1e(e, dom)
            return
        mfn = (e & ADDR_MASK) >> 12
        if mfn == table:
            return
        linear = is_linear(self, mfn, table)
        self.put_page_and_type(mfn, dom)
        if linear:
            put_linear(self, mfn, table)

    def devalidate(self, mfn: int, level: int, dom) -> None:
        """free_lN_table(): drop the references the table's present entries hold."""
        t = self.u64[mfn << 9 : (mfn + 1) << 9]
        for i in self._slots(level):
            e = int(t[i])
            if e & _PAGE_PRESENT:
                if level == 1:
                    self.machine.access.fold_pte(e)  # keys U/Z: its A/D bits are not lost
                self._put_entry(e, level, dom, mfn)

    # ---- updates -----------------------------------------------------------------------------

    def mod_entry(self, table: int, idx: int, new: int, level: int, dom, preserve_ad=False) -> int:
        """mod_lN_entry(): change one entry of a validated table, references and all."""
        if level == 4 and ROOT_PAGETABLE_FIRST_XEN_SLOT <= idx <= ROOT_PAGETABLE_LAST_XEN_SLOT:
            self.gdprintk(2399, f"L4 update in Xen-private area, slot {idx:#x}", dom)
            return -EINVAL
        slot = (table << 9) + idx
        old = int(self.u64[slot])
        if level == 1:
            self.machine.access.fold_pte(old)  # keys U/Z (emu/access/pv.py): A/D not lost
        if preserve_ad:
            new |= old & (_PAGE_ACCESSED | _PAGE_DIRTY)
        if new & _PAGE_PRESENT:
            rc = self.check_flags(new, level, dom, mod=True)
            if rc:
                return rc
            fast = LN_FASTPATH if level > 1 else L1_FASTPATH
            if old & _PAGE_PRESENT and not ((old ^ new) & ~fast):
                self.u64[slot] = self.adjust(new, level)
                return 0
            rc = (
                self.get_page_from_l1e(new, dom)
                if level == 1
                else self.get_page_from_lNe(new, level, dom, table)
            )
            if rc:
                return rc
            new = self.adjust(new, level)
        self.u64[slot] = new
        if old & _PAGE_PRESENT:
            self._put_entry(old, level, dom, table)
        return 0

    # ---- messages ------------------------------------------------------------------------------

    def m2p_str(self, mfn: int) -> str:
        """get_gpfn_from_mfn() as %05lx (INVALID_M2P_ENTRY prints as all f)."""
        return f"{int(self.machine.m2p[mfn]):05x}"

    def _who(self, dom) -> str:
        """%pv of `current`: the domain's vCPU on this thread, else the toolstack's dom0 vCPU."""
        v = self.machine.pv.current_vcpu(dom)
        return v.name if v is not None else "d0v0"

    def gdprintk(self, line: int, text: str, dom) -> None:
        """A debug build's gdprintk() from xen/arch/x86/mm.c (xen/include/xen/lib.h:106-108)."""
        self.machine.console.printk(f"arch/x86/mm.c:{line}:{self._who(dom)} {text}\n")

    def gprintk(self, text: str, dom) -> None:
        """gprintk() (xen/include/xen/lib.h:89-90): `%pv text`."""
        self.machine.console.printk(f"{self._who(dom)} {text}\n")


class GuestFault(Exception):
    """A hypervisor access to guest linear memory that the guest's tables do not allow."""


def linear_to_maddr(u64, nr_frames: int, cr3: int, va: int, write: bool) -> int:
    """The machine address behind guest-linear `va` under page tables at `cr3` (Xen's own
    access through the guest's tables: P at every level, RW for writes; Xen's range and
    non-canonical addresses refused as __addr_ok() does)."""
    va &= (1 << 64) - 1
    top = va >> 47
    if top not in (0, 0x1FFFF) or HYPERVISOR_VIRT_START <= va < HYPERVISOR_VIRT_END:
        raise GuestFault(va)
    mfn = (cr3 & ADDR_MASK) >> 12
    for shift in (39, 30, 21, 12):
        if mfn >= nr_frames:
            raise GuestFault(va)
        e = int(u64[(mfn << 9) + ((va >> shift) & 511)])
        if (
            not e & _PAGE_PRESENT
            or (write and not e & _PAGE_RW)
            or (shift > 12 and e & _PAGE_PSE and shift != 39)
        ):
            raise GuestFault(va)
        mfn = (e & ADDR_MASK) >> 12
    if mfn >= nr_frames:
        raise GuestFault(va)
    return (mfn << 12) | (va & 0xFFF)
