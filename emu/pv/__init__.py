"""64-bit Xen PV guests (`type="pv"` domains): built and run as Xen 4.22 builds and runs them.

- domain.py   `machine.pv` (PV): domain creation/destruction hooks, crash handling
- elf.py      the kernel's ELF image and Xen notes (libelf), refusals as xl reports them
- build.py    the PV domain builder (libxenguest x86_64): layout, start_info, page tables
- mm.py       page types (get_page_type/put_page_type), validation, entry updates
- xen.py      Xen's frames in every PV L4: RO M2P (slot 256), per-domain GDT area (260)
- vcpu.py     the PV vCPU on Unicorn, direct paging on the guest's own tables
- traps.py    bounce frames, trap table, `int n`, FEP, iret;  priv_op.py: #GP emulation, CPUID
- hcall_table.py the hypercall table; hypercall.py, hypercall_mm.py, vcpu_op.py its entries
- event.py    event channels, sched_op, console_io, dom0's console daemon for the PV ring
- grant.py, grant_map.py  grant tables;  xenstored.py: dom0's xenstored;  audit.py: counts
"""
