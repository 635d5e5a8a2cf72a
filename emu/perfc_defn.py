"""Xen 4.22's performance counters for an x86 build with PERF_COUNTERS=y (and HVM,
SHADOW_PAGING, SCHED_CREDIT, SCHED_CREDIT2 at their defaults; PERF_ARRAYS=n), in the order
`perfc_info[]` has them: xen/include/xen/perfc_defn.h, which includes
xen/arch/x86/include/asm/perfc_defn.h first.

(var, description, kind, nr_elements); kind is the macro. Array sizes: NR_hypercalls 64
(arch/x86/include/asm/config.h:39), vmexits MAX(76, VMEXIT_NPF_PERFC + 1) = 167,
cause_vector 0x20. The comments give each line's number in its header.
"""

PERFC_DEFN: tuple[tuple[str, str, str, int], ...] = (
    # xen/arch/x86/include/asm/perfc_defn.h
    ("exceptions", "exceptions", "PERFCOUNTER_ARRAY", 32),  # :5
    ("vmexits", "vmexits", "PERFCOUNTER_ARRAY", 167),  # :12
    ("cause_vector", "cause vector", "PERFCOUNTER_ARRAY", 32),  # :16
    ("seg_fixups", "segmentation fixups", "PERFCOUNTER", 0),  # :20
    ("apic_timer", "apic timer interrupts", "PERFCOUNTER", 0),  # :22
    ("domain_page_tlb_flush", "domain page tlb flushes", "PERFCOUNTER", 0),  # :24
    ("calls_to_mmuext_op", "calls to mmuext_op", "PERFCOUNTER", 0),  # :26
    ("num_mmuext_ops", "mmuext ops", "PERFCOUNTER", 0),  # :27
    ("calls_to_mmu_update", "calls to mmu_update", "PERFCOUNTER", 0),  # :28
    ("num_page_updates", "page updates", "PERFCOUNTER", 0),  # :29
    ("writable_mmu_updates", "mmu_updates of writable pages", "PERFCOUNTER", 0),  # :30
    ("calls_to_update_va", "calls to update_va_map", "PERFCOUNTER", 0),  # :31
    ("page_faults", "page faults", "PERFCOUNTER", 0),  # :32
    ("copy_user_faults", "copy_user faults", "PERFCOUNTER", 0),  # :33
    ("map_domain_page_count", "map_domain_page count", "PERFCOUNTER", 0),  # :35
    ("ptwr_emulations", "writable pt emulations", "PERFCOUNTER", 0),  # :36
    ("mmio_ro_emulations", "mmio ro emulations", "PERFCOUNTER", 0),  # :37
    ("exception_fixed", "pre-exception fixed", "PERFCOUNTER", 0),  # :39
    ("guest_walk", "guest pagetable walks", "PERFCOUNTER", 0),  # :41
    ("shadow_alloc", "calls to shadow_alloc", "PERFCOUNTER", 0),  # :46
    ("shadow_alloc_tlbflush", "shadow_alloc flushed TLBs", "PERFCOUNTER", 0),  # :47
    ("shadow_alloc_count", "number of shadow pages in use", "PERFSTATUS", 0),  # :50
    ("shadow_free", "calls to shadow_free", "PERFCOUNTER", 0),  # :51
    ("shadow_prealloc_1", "shadow recycles old shadows", "PERFCOUNTER", 0),  # :52
    ("shadow_prealloc_2", "shadow recycles in-use shadows", "PERFCOUNTER", 0),  # :53
    ("shadow_linear_map_failed", "shadow hit read-only linear map", "PERFCOUNTER", 0),  # :54
    ("shadow_a_update", "shadow A bit update", "PERFCOUNTER", 0),  # :55
    ("shadow_ad_update", "shadow A&D bit update", "PERFCOUNTER", 0),  # :56
    ("shadow_fault", "calls to shadow_fault", "PERFCOUNTER", 0),  # :57
    ("shadow_fault_fast_gnp", "shadow_fault fast path n/p", "PERFCOUNTER", 0),  # :58
    ("shadow_fault_fast_mmio", "shadow_fault fast path mmio", "PERFCOUNTER", 0),  # :59
    ("shadow_fault_fast_fail", "shadow_fault fast path error", "PERFCOUNTER", 0),  # :60
    ("shadow_fault_bail_bad_gfn", "shadow_fault guest bad gfn", "PERFCOUNTER", 0),  # :61
    ("shadow_fault_bail_real_fault", "shadow_fault really guest fault", "PERFCOUNTER", 0),  # :62
    ("shadow_fault_emulate_read", "shadow_fault emulates a read", "PERFCOUNTER", 0),  # :64
    ("shadow_fault_emulate_write", "shadow_fault emulates a write", "PERFCOUNTER", 0),  # :65
    ("shadow_fault_emulate_failed", "shadow_fault emulator fails", "PERFCOUNTER", 0),  # :66
    ("shadow_fault_emulate_stack", "shadow_fault emulate stack write", "PERFCOUNTER", 0),  # :67
    ("shadow_fault_emulate_wp", "shadow_fault emulate for CR0.WP=0", "PERFCOUNTER", 0),  # :68
    ("shadow_fault_fast_emulate", "shadow_fault fast emulate", "PERFCOUNTER", 0),  # :69
    ("shadow_fault_fast_emulate_fail", "shadow_fault fast emulate failed", "PERFCOUNTER", 0),  # :70
    ("shadow_fault_mmio", "shadow_fault handled as mmio", "PERFCOUNTER", 0),  # :72
    ("shadow_fault_fixed", "shadow_fault fixed fault", "PERFCOUNTER", 0),  # :73
    ("shadow_ptwr_emulate", "shadow causes ptwr to emulate", "PERFCOUNTER", 0),  # :74
    ("shadow_validate_gl1e_calls", "calls to shadow_validate_gl1e", "PERFCOUNTER", 0),  # :75
    ("shadow_validate_gl2e_calls", "calls to shadow_validate_gl2e", "PERFCOUNTER", 0),  # :76
    ("shadow_validate_gl3e_calls", "calls to shadow_validate_gl3e", "PERFCOUNTER", 0),  # :77
    ("shadow_validate_gl4e_calls", "calls to shadow_validate_gl4e", "PERFCOUNTER", 0),  # :78
    ("shadow_hash_lookups", "calls to shadow_hash_lookup", "PERFCOUNTER", 0),  # :79
    ("shadow_hash_lookup_head", "shadow hash hit in bucket head", "PERFCOUNTER", 0),  # :80
    ("shadow_hash_lookup_miss", "shadow hash misses", "PERFCOUNTER", 0),  # :81
    ("shadow_get_shadow_status", "calls to get_shadow_status", "PERFCOUNTER", 0),  # :82
    ("shadow_hash_inserts", "calls to shadow_hash_insert", "PERFCOUNTER", 0),  # :83
    ("shadow_hash_deletes", "calls to shadow_hash_delete", "PERFCOUNTER", 0),  # :84
    ("shadow_writeable", "shadow removes write access", "PERFCOUNTER", 0),  # :85
    ("shadow_writeable_h_1", "shadow writeable: 32b w2k3", "PERFCOUNTER", 0),  # :86
    ("shadow_writeable_h_2", "shadow writeable: 32pae w2k3", "PERFCOUNTER", 0),  # :87
    ("shadow_writeable_h_3", "shadow writeable: 64b w2k3", "PERFCOUNTER", 0),  # :88
    ("shadow_writeable_h_4", "shadow writeable: linux low/solaris", "PERFCOUNTER", 0),  # :89
    ("shadow_writeable_h_5", "shadow writeable: linux high", "PERFCOUNTER", 0),  # :90
    ("shadow_writeable_h_6", "shadow writeable: FreeBSD", "PERFCOUNTER", 0),  # :91
    ("shadow_writeable_h_7", "shadow writeable: sl1p", "PERFCOUNTER", 0),  # :92
    ("shadow_writeable_h_8", "shadow writeable: sl1p failed", "PERFCOUNTER", 0),  # :93
    ("shadow_writeable_bf", "shadow writeable brute-force", "PERFCOUNTER", 0),  # :94
    ("shadow_writeable_bf_1", "shadow writeable resync bf", "PERFCOUNTER", 0),  # :95
    ("shadow_mappings", "shadow removes all mappings", "PERFCOUNTER", 0),  # :96
    ("shadow_mappings_bf", "shadow rm-mappings brute-force", "PERFCOUNTER", 0),  # :97
    ("shadow_early_unshadow", "shadow unshadows for fork/exit", "PERFCOUNTER", 0),  # :98
    ("shadow_unshadow", "shadow unshadows a page", "PERFCOUNTER", 0),  # :99
    ("shadow_up_pointer", "shadow unshadow by up-pointer", "PERFCOUNTER", 0),  # :100
    ("shadow_unshadow_bf", "shadow unshadow brute-force", "PERFCOUNTER", 0),  # :101
    ("shadow_get_page_fail", "shadow_get_page_from_l1e failed", "PERFCOUNTER", 0),  # :102
    ("shadow_check_gwalk", "shadow checks gwalk", "PERFCOUNTER", 0),  # :103
    ("shadow_inconsistent_gwalk", "shadow check inconsistent gwalk", "PERFCOUNTER", 0),  # :104
    # :105
    ("shadow_rm_write_flush_tlb", "shadow flush tlb by removing write perm", "PERFCOUNTER", 0),
    ("shadow_invlpg", "shadow emulates invlpg", "PERFCOUNTER", 0),  # :108
    ("shadow_invlpg_fault", "shadow invlpg faults", "PERFCOUNTER", 0),  # :109
    ("shadow_em_ex_pt", "shadow extra pt write", "PERFCOUNTER", 0),  # :111
    ("shadow_em_ex_non_pt", "shadow extra non-pt-write op", "PERFCOUNTER", 0),  # :112
    ("shadow_em_ex_fail", "shadow extra emulation failed", "PERFCOUNTER", 0),  # :113
    ("shadow_oos_fixup_add", "shadow OOS fixup adds", "PERFCOUNTER", 0),  # :115
    ("shadow_oos_fixup_evict", "shadow OOS fixup evictions", "PERFCOUNTER", 0),  # :116
    ("shadow_unsync", "shadow OOS unsyncs", "PERFCOUNTER", 0),  # :117
    ("shadow_unsync_evict", "shadow OOS evictions", "PERFCOUNTER", 0),  # :118
    ("shadow_resync", "shadow OOS resyncs", "PERFCOUNTER", 0),  # :119
    ("realmode_emulations", "realmode instructions emulated", "PERFCOUNTER", 0),  # :123
    ("realmode_exits", "vmexits from realmode", "PERFCOUNTER", 0),  # :124
    ("pauseloop_exits", "vmexits from Pause-Loop Detection", "PERFCOUNTER", 0),  # :126
    ("iommu_pt_shatters", "IOMMU page table shatters", "PERFCOUNTER", 0),  # :128
    ("iommu_pt_coalesces", "IOMMU page table coalesces", "PERFCOUNTER", 0),  # :129
    ("buslock", "Bus Locks Detected", "PERFCOUNTER", 0),  # :131
    ("vmnotify_crash", "domain crashes by Notify VM Exit", "PERFCOUNTER", 0),  # :132
    # xen/include/xen/perfc_defn.h
    ("hypercalls", "hypercalls", "PERFCOUNTER_ARRAY", 64),  # :8
    ("calls_from_multicall", "calls from multicall", "PERFCOUNTER", 0),  # :11
    ("irqs", "#interrupts", "PERFCOUNTER", 0),  # :13
    ("ipis", "#IPIs", "PERFCOUNTER", 0),  # :14
    ("rcu_idle_timer", "RCU: idle_timer", "PERFCOUNTER", 0),  # :16
    ("sched_irq", "sched: timer", "PERFCOUNTER", 0),  # :19
    ("sched_run", "sched: runs through scheduler", "PERFCOUNTER", 0),  # :20
    ("sched_ctx", "sched: context switches", "PERFCOUNTER", 0),  # :21
    ("schedule", "sched: specific scheduler", "PERFCOUNTER", 0),  # :22
    ("dom_init", "sched: dom_init", "PERFCOUNTER", 0),  # :23
    ("dom_destroy", "sched: dom_destroy", "PERFCOUNTER", 0),  # :24
    ("vcpu_yield", "sched: vcpu_yield", "PERFCOUNTER", 0),  # :25
    ("unit_alloc", "sched: unit_alloc", "PERFCOUNTER", 0),  # :26
    ("unit_insert", "sched: unit_insert", "PERFCOUNTER", 0),  # :27
    ("unit_remove", "sched: unit_remove", "PERFCOUNTER", 0),  # :28
    ("unit_sleep", "sched: unit_sleep", "PERFCOUNTER", 0),  # :29
    ("unit_wake_running", "sched: unit_wake_running", "PERFCOUNTER", 0),  # :30
    ("unit_wake_onrunq", "sched: unit_wake_onrunq", "PERFCOUNTER", 0),  # :31
    ("unit_wake_runnable", "sched: unit_wake_runnable", "PERFCOUNTER", 0),  # :32
    ("unit_wake_not_runnable", "sched: unit_wake_not_runnable", "PERFCOUNTER", 0),  # :33
    ("tickled_no_cpu", "sched: tickled_no_cpu", "PERFCOUNTER", 0),  # :34
    ("tickled_idle_cpu", "sched: tickled_idle_cpu", "PERFCOUNTER", 0),  # :35
    ("tickled_idle_cpu_excl", "sched: tickled_idle_cpu_exclusive", "PERFCOUNTER", 0),  # :36
    ("tickled_busy_cpu", "sched: tickled_busy_cpu", "PERFCOUNTER", 0),  # :37
    ("unit_check", "sched: unit_check", "PERFCOUNTER", 0),  # :38
    ("migrate_running", "sched: migrate_running", "PERFCOUNTER", 0),  # :39
    ("migrate_on_runq", "sched: migrate_on_runq", "PERFCOUNTER", 0),  # :40
    ("migrated", "sched: migrated", "PERFCOUNTER", 0),  # :41
    ("delay_ms", "csched: delay", "PERFCOUNTER", 0),  # :45
    ("acct_run", "csched: acct_run", "PERFCOUNTER", 0),  # :46
    ("acct_no_work", "csched: acct_no_work", "PERFCOUNTER", 0),  # :47
    ("acct_balance", "csched: acct_balance", "PERFCOUNTER", 0),  # :48
    ("acct_reorder", "csched: acct_reorder", "PERFCOUNTER", 0),  # :49
    ("acct_min_credit", "csched: acct_min_credit", "PERFCOUNTER", 0),  # :50
    ("acct_unit_active", "csched: acct_unit_active", "PERFCOUNTER", 0),  # :51
    ("acct_unit_idle", "csched: acct_unit_idle", "PERFCOUNTER", 0),  # :52
    ("unit_boost", "csched: unit_boost", "PERFCOUNTER", 0),  # :53
    ("unit_park", "csched: unit_park", "PERFCOUNTER", 0),  # :54
    ("unit_unpark", "csched: unit_unpark", "PERFCOUNTER", 0),  # :55
    ("load_balance_idle", "csched: load_balance_idle", "PERFCOUNTER", 0),  # :56
    ("load_balance_over", "csched: load_balance_over", "PERFCOUNTER", 0),  # :57
    ("load_balance_other", "csched: load_balance_other", "PERFCOUNTER", 0),  # :58
    ("steal_trylock", "csched: steal_trylock", "PERFCOUNTER", 0),  # :59
    ("steal_trylock_failed", "csched: steal_trylock_failed", "PERFCOUNTER", 0),  # :60
    ("steal_peer_idle", "csched: steal_peer_idle", "PERFCOUNTER", 0),  # :61
    ("migrate_queued", "csched: migrate_queued", "PERFCOUNTER", 0),  # :62
    ("migrate_kicked_away", "csched: migrate_kicked_away", "PERFCOUNTER", 0),  # :63
    ("unit_hot", "csched: unit_hot", "PERFCOUNTER", 0),  # :64
    ("burn_credits_t2c", "csched2: burn_credits_t2c", "PERFCOUNTER", 0),  # :69
    ("acct_load_balance", "csched2: acct_load_balance", "PERFCOUNTER", 0),  # :70
    ("upd_max_weight_quick", "csched2: update_max_weight_quick", "PERFCOUNTER", 0),  # :71
    ("upd_max_weight_full", "csched2: update_max_weight_full", "PERFCOUNTER", 0),  # :72
    ("migrate_requested", "csched2: migrate_requested", "PERFCOUNTER", 0),  # :73
    ("migrate_no_runq", "csched2: migrate_no_runq", "PERFCOUNTER", 0),  # :74
    ("runtime_min_timer", "csched2: runtime_min_timer", "PERFCOUNTER", 0),  # :75
    ("runtime_max_timer", "csched2: runtime_max_timer", "PERFCOUNTER", 0),  # :76
    ("pick_resource", "csched2: pick_resource", "PERFCOUNTER", 0),  # :77
    ("need_fallback_cpu", "csched2: need_fallback_cpu", "PERFCOUNTER", 0),  # :78
    ("migrate_resisted", "csched2: migrate_resisted", "PERFCOUNTER", 0),  # :79
    ("credit_reset", "csched2: credit_reset", "PERFCOUNTER", 0),  # :80
    ("deferred_to_tickled_cpu", "csched2: deferred_to_tickled_cpu", "PERFCOUNTER", 0),  # :81
    ("tickled_cpu_overwritten", "csched2: tickled_cpu_overwritten", "PERFCOUNTER", 0),  # :82
    ("tickled_cpu_overridden", "csched2: tickled_cpu_overridden", "PERFCOUNTER", 0),  # :83
    ("need_flush_tlb_flush", "PG_need_flush tlb flushes", "PERFCOUNTER", 0),  # :86
)
