"""vCPUs and what runs them: `vcpu` (one Unicorn per guest vCPU), `sched` (pCPU threads and
time slices), `priv_op` (privileged-instruction emulation and hypercalls) and `regdump`
(register dumps in Xen's format).
"""
