"""Memory management (xen/arch/x86/mm/, xen/common/page_alloc.c, memory.c).

`page` holds the x86 paging facts (asm/page.h), `ram` the machine's RAM, `page_info` the
frame table and its PGC_/PGT_ flags, `page_alloc` the heap, `p2m` the P2M/M2P, `memory`
the memory ops, and `guestmem` the hypervisor's reads and writes of guest linear memory.
"""
