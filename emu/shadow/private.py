"""Shadow paging's shared definitions (Xen keeps them in mm/shadow/private.h): shadow page
types, fault results, #PF error-code bits, the error a shadow operation raises."""

from __future__ import annotations


class ShadowError(Exception):
    """A shadow operation that cannot be done for this guest (the domain should crash)."""


# Results of ShadowDomain.page_fault().
FIXED = 0  # the shadow now allows the access: resume, the instruction re-executes
GUEST_FAULT = 1  # the guest's own tables deny it: inject a #PF into the guest
CRASH = 2  # the domain must be crashed (bad gfn, pool exhausted, unsupported mapping)

# Shadow page types, master with CONFIG_HVM (xen/arch/x86/mm/shadow/private.h).
SH_type_none = 0
SH_type_l1_64_shadow = 7
SH_type_fl1_64_shadow = 8
SH_type_l2_64_shadow = 9
SH_type_l2h_64_shadow = 10
SH_type_l3_64_shadow = 11
SH_type_l4_64_shadow = 12
SH_type_p2m_table = 13
SH_type_monitor_table = 14
SH_type_oos_snapshot = 15
SH_type_unused = 16
SH_type_min_shadow = 1
SH_type_max_shadow = 12

SHF_L1_64 = 1 << SH_type_l1_64_shadow
SHF_L2_64 = 1 << SH_type_l2_64_shadow
SHF_L3_64 = 1 << SH_type_l3_64_shadow
SHF_L4_64 = 1 << SH_type_l4_64_shadow
SHF_page_type_mask = ((1 << (SH_type_max_shadow + 1)) - 1) & ~((1 << SH_type_min_shadow) - 1)

# Guest level (1..4) -> shadow type, and back.
LEVEL_TYPE = {
    1: SH_type_l1_64_shadow,
    2: SH_type_l2_64_shadow,
    3: SH_type_l3_64_shadow,
    4: SH_type_l4_64_shadow,
}
TYPE_LEVEL = {t: lvl for lvl, t in LEVEL_TYPE.items()}

# #PF error code bits (PFEC_*).
PFEC_page_present = 0x1
PFEC_write_access = 0x2
PFEC_user_mode = 0x4
PFEC_reserved_bit = 0x8
PFEC_insn_fetch = 0x10
