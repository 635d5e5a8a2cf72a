"""Shadow paging (xen/arch/x86/mm/shadow/): 64-bit guests, 4 levels, 4 KiB pages.

`emu.shadow.common.shadow_enable(machine, dom)` gives a domain its shadow pool and sets
`dom.paging` to a `ShadowDomain`, whose `page_fault()` the vCPU's #PF hook calls and which
returns one of `FIXED`, `GUEST_FAULT` or `CRASH` (emu/shadow/private.py).
"""
