"""A PV kernel's ELF image, read as Xen's libelf reads it (xen/common/libelf/).

`parse_kernel(blob)` returns the `ElfDomParms` the domain builder needs (virt_base, kernel
start/end, entry, hypercall page, features) and the loadable segments, or raises
`ElfRefused`. What libelf refuses is refused here by the same rules: not an ELF64 x86-64
image, no Xen notes, a LOADER other than `generic` (unless GUEST_OS starts `linux`), a
XEN_VERSION not starting `xen-3.0`, addresses out of bounds, a required feature Xen does not
support or `dom0` required. xl then reports the probe failure with libxenguest's one line
(`xc_dom_find_loader: no loader found`), as every loader's probe has failed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_NOTE = 7

# Xen ELF note types (xen/include/public/elfnote.h).
XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_PADDR_OFFSET = 4
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_GUEST_VERSION = 7
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_PAE_MODE = 9
XEN_ELFNOTE_FEATURES = 10
XEN_ELFNOTE_BSD_SYMTAB = 11
XEN_ELFNOTE_SUSPEND_CANCEL = 14
XEN_ELFNOTE_INIT_P2M = 15
XEN_ELFNOTE_PHYS32_ENTRY = 18
_INT_NOTES = {
    XEN_ELFNOTE_ENTRY: "virt_entry",
    XEN_ELFNOTE_HYPERCALL_PAGE: "virt_hypercall",
    XEN_ELFNOTE_VIRT_BASE: "virt_base",
    XEN_ELFNOTE_PADDR_OFFSET: "elf_paddr_offset",
    XEN_ELFNOTE_INIT_P2M: "p2m_base",
    XEN_ELFNOTE_PHYS32_ENTRY: "phys_entry",
}
_STR_NOTES = {
    XEN_ELFNOTE_XEN_VERSION: "xen_ver",
    XEN_ELFNOTE_GUEST_OS: "guest_os",
    XEN_ELFNOTE_LOADER: "loader",
    XEN_ELFNOTE_PAE_MODE: "pae_mode",
    XEN_ELFNOTE_FEATURES: "features",
}

# Feature names (libelf-dominfo.c elf_xen_feature_names[], public/features.h).
FEATURE_NAMES = {
    "writable_page_tables": 0,
    "writable_descriptor_tables": 1,
    "auto_translated_physmap": 2,
    "supervisor_mode_kernel": 3,
    "pae_pgdir_above_4gb": 4,
    "hvm_callback_vector": 8,
    "dom0": 11,
}
XENFEAT_auto_translated_physmap, XENFEAT_dom0 = 2, 11
# What a 64-bit PV domU may require (xc_dom_x86 arch hooks: writable page tables emulated,
# page directories above 4 GiB; neither supervisor mode kernel nor auto-translate for PV).
SUPPORTED_FEATURES = (1 << 0) | (1 << 1) | (1 << 4)
UNSET = (1 << 64) - 1

# libxenguest's report when every loader's probe fails (xg_dom_core.c:689, xc_dom_find_loader).
NO_LOADER = (
    "xc: error: panic: xg_dom_core.c:689: xc_dom_find_loader: no loader found: Invalid kernel"
)


class ElfRefused(Exception):
    """libelf refused the image; `detail` is libelf's own reason (logged at detail level)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class Segment:
    paddr: int
    filesz: int
    memsz: int
    offset: int


@dataclass
class ElfDomParms:
    """`struct elf_dom_parms` for one kernel, plus its loadable segments."""

    virt_base: int = UNSET
    elf_paddr_offset: int = UNSET
    virt_entry: int = UNSET
    virt_hypercall: int = UNSET
    p2m_base: int = UNSET
    phys_entry: int = UNSET
    virt_kstart: int = 0
    virt_kend: int = 0
    xen_ver: str = ""
    guest_os: str = ""
    loader: str = ""
    pae_mode: str = ""
    features: str = ""
    f_supported: int = 0
    f_required: int = 0
    pstart: int = 0
    pend: int = 0
    segments: list[Segment] = field(default_factory=list)


def _notes(blob: bytes, off: int, size: int):
    end = off + size
    while off + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
        name_off = off + 12
        desc_off = name_off + ((namesz + 3) & ~3)
        nxt = desc_off + ((descsz + 3) & ~3)
        if nxt > end or desc_off + descsz > len(blob):
            return
        name = blob[name_off : name_off + namesz].rstrip(b"\0")
        yield name, ntype, blob[desc_off : desc_off + descsz]
        off = nxt


def parse_features(text: str) -> tuple[int, int]:
    """elf_xen_parse_features(): `|`-separated names, `!` = required; (supported, required)."""
    sup = req = 0
    for name in text.split("|"):
        if not name:
            continue
        required = name.startswith("!")
        name = name.lstrip("!")
        bit = FEATURE_NAMES.get(name)
        if bit is None:
            if required:
                raise ElfRefused(f"ERROR: Unknown feature '{name}'")
            continue
        sup |= 1 << bit
        if required:
            req |= 1 << bit
    return sup, req


def _apply_note(parms: ElfDomParms, ntype: int, desc: bytes) -> None:
    if ntype in _INT_NOTES:
        if len(desc) in (1, 2, 4, 8):
            val = int.from_bytes(desc, "little")
            setattr(parms, _INT_NOTES[ntype], val)
    elif ntype in _STR_NOTES:
        setattr(parms, _STR_NOTES[ntype], desc.split(b"\0", 1)[0].decode("latin-1"))


def parse_kernel(blob: bytes) -> ElfDomParms:
    """elf_init + elf_parse_binary + elf_xen_parse for a 64-bit PV domU kernel."""
    if len(blob) < 64 or blob[:4] != b"\x7fELF":
        raise ElfRefused("kernel is not an ELF image")
    if blob[4] != 2 or blob[5] != 1:
        raise ElfRefused("ERROR: not a 64-bit little-endian ELF image")
    (e_machine,) = struct.unpack_from("<H", blob, 18)
    e_entry, e_phoff, e_shoff = struct.unpack_from("<QQQ", blob, 24)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", blob, 54)
    if e_phoff + e_phnum * max(e_phentsize, 56) > len(blob):
        raise ElfRefused("ERROR: ELF program headers out of range")
    p = ElfDomParms()
    have_notes = False
    lo, hi = UNSET, 0
    for i in range(e_phnum):
        ptype, pflags, poff, _vaddr, paddr, filesz, memsz = struct.unpack_from(
            "<IIQQQQQ", blob, e_phoff + i * e_phentsize
        )
        if ptype == PT_NOTE:
            for name, ntype, desc in _notes(blob, poff, filesz):
                if name == b"Xen":
                    have_notes = True
                    _apply_note(p, ntype, desc)
        elif ptype == PT_LOAD and pflags & (PF_R | PF_W | PF_X) and memsz:
            if poff + filesz > len(blob) or filesz > memsz:
                raise ElfRefused("ERROR: ELF segment out of range")
            p.segments.append(Segment(paddr, filesz, memsz, poff))
            lo, hi = min(lo, paddr), max(hi, paddr + memsz)
    if not have_notes and e_shoff and e_shnum:  # fallback: SHT_NOTE sections
        for i in range(e_shnum):
            base = e_shoff + i * e_shentsize
            if base + 64 > len(blob):
                break
            (sh_type,) = struct.unpack_from("<I", blob, base + 4)
            sh_off, sh_size = struct.unpack_from("<QQ", blob, base + 24)
            if sh_type == SHT_NOTE:
                for name, ntype, desc in _notes(blob, sh_off, sh_size):
                    if name == b"Xen":
                        have_notes = True
                        _apply_note(p, ntype, desc)
    # elf_xen_note_check() (libelf-dominfo.c:409-461)
    if not have_notes:
        raise ElfRefused("ERROR: Not a Xen-ELF image: No ELF notes or '__xen_guest' section found")
    if not p.loader.startswith("generic") and not p.guest_os.startswith("linux"):
        raise ElfRefused(
            "ERROR: Will only load images built for the generic loader or Linux images"
            f" (Not '{p.loader}' and '{p.guest_os}') or with PHYS32_ENTRY set"
        )
    if not p.xen_ver.startswith("xen-3.0"):
        raise ElfRefused(f"ERROR: Xen will only load images built for Xen v3.0 (Not '{p.xen_ver}')")
    if e_machine != EM_X86_64:
        raise ElfRefused(f"xc_dom_guest_type: unknown image type {e_machine}")
    p.f_supported, p.f_required = parse_features(p.features)
    if not p.segments:
        raise ElfRefused("ERROR: no loadable segments")
    p.pstart, p.pend = lo, hi
    _addr_calc_check(p, e_entry)
    return p


def _addr_calc_check(p: ElfDomParms, e_entry: int) -> None:
    """elf_xen_addr_calc_check() (libelf-dominfo.c:463-557)."""
    if p.elf_paddr_offset != UNSET and p.virt_base == UNSET:
        raise ElfRefused("ERROR: ELF_PADDR_OFFSET set, VIRT_BASE unset")
    if p.virt_base == UNSET:
        p.virt_base = 0  # "ELF: VIRT_BASE unset, using 0"
    if p.elf_paddr_offset == UNSET:
        p.elf_paddr_offset = 0  # notes present (libelf-dominfo.c:498-507)
    virt_offset = p.virt_base - p.elf_paddr_offset
    p.virt_kstart = p.pstart + virt_offset
    p.virt_kend = p.pend + virt_offset
    if p.virt_entry == UNSET:
        p.virt_entry = e_entry
    if not (p.virt_kstart <= p.virt_entry <= p.virt_kend) or p.virt_base > p.virt_kstart:
        raise ElfRefused("ERROR: ELF start or entries are out of bounds")
    if p.p2m_base != UNSET and p.virt_kstart <= p.p2m_base < p.virt_kend:
        raise ElfRefused("ERROR: P->M table base is out of bounds")


def check_domu(p: ElfDomParms) -> None:
    """The toolstack's checks after parsing (xg_dom_core.c, xg_dom_elfloader.c)."""
    if p.f_required & ~SUPPORTED_FEATURES:
        raise ElfRefused("guest requires unsupported features")
    if p.f_required & (1 << XENFEAT_dom0):
        raise ElfRefused("Kernel does not support unprivileged (DomU) operation")


def write_pv_elf(code: bytes, base: int = 0x100000, guest_os: str = "test") -> bytes:
    """A minimal 64-bit PV kernel image: `code` at `base` (entry), a hypercall page at
    base + 0x1000 (4 KiB of `ret`, filled by the builder), one RWX PT_LOAD and a PT_NOTE
    with the notes libelf needs (GUEST_OS, LOADER generic, XEN_VERSION xen-3.0,
    HYPERCALL_PAGE, FEATURES). For tests and benchmarks of the PV path."""
    if len(code) > 0x1000:
        raise ValueError("code larger than one page")
    image = code.ljust(0x1000, b"\xcc") + b"\xc3" * 0x1000

    def note(ntype: int, desc: bytes) -> bytes:
        pad = desc.ljust((len(desc) + 3) & ~3, b"\0")
        return struct.pack("<III", 4, len(desc), ntype) + b"Xen\0" + pad

    notes = note(XEN_ELFNOTE_GUEST_OS, guest_os.encode() + b"\0")
    notes += note(XEN_ELFNOTE_LOADER, b"generic\0") + note(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")
    notes += note(XEN_ELFNOTE_HYPERCALL_PAGE, struct.pack("<Q", base + 0x1000))
    notes += note(XEN_ELFNOTE_FEATURES, b"!writable_page_tables\0")
    load_off, note_off = 0x1000, 0x1000 + len(image)
    ehdr = struct.pack(
        "<4sBBBBxxxxxxxxHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 2, EM_X86_64, 1, base, 64, 0, 0, 64, 56, 2, 64, 0, 0,
    )  # fmt: skip
    phdrs = struct.pack("<IIQQQQQQ", PT_LOAD, 7, load_off, base, base, len(image), len(image), 4096)
    phdrs += struct.pack("<IIQQQQQQ", PT_NOTE, 4, note_off, 0, 0, len(notes), len(notes), 4)
    return (ehdr + phdrs).ljust(load_off, b"\0") + image + notes
