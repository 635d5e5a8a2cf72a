"""`xl list -l`: libxl's domain configuration as xl 4.22 prints it (tools/xl/xl_info.c).

list_domains_details() (xl_info.c:543) takes each domain's stored libxl_domain_config, as
libxl_retrieve_domain_configuration() refreshes it (libxl_domain.c:2412: name, uuid,
available vCPUs, memory target and maximum, scheduler parameters), and prints
`[{"domid":N,"config":{...}}, ...]` with json-c's JSON_C_TO_STRING_PRETTY (xl_info.c:606,
json-c is preferred over YAJL since 4.21): two-space indent, `"key":value` with no space,
`/` escaped as `\\/`, then puts()'s newline.

Inside "config" the keys come in libxl_types.idl order, and a field is left out while it
holds its default (gentypes.py get_default_expr: init_val, check_default_fn, zero for plain
numbers and enums without init_val, empty arrays); structures are always present.

What a domain's config holds here:
- a domU: what xl's parser and libxl's setdefault store for its xl config
  (libxl_create.c:29 libxl__domain_create_info_setdefault: hap follows the host's
  capabilities, shadow here; oos, run_hotplug_scripts, driver_domain, ssidref
  SECINITSID_DOMU, xend_suspend_evtchn_compat; libxl_create.c:1158 passthrough), the
  refreshed values, and the shutdown actions of its config;
- dom0: the stub config tools/helpers/init-dom-json.c stores at boot (type pv only), with
  the refreshed values.
Fields that describe hardware this machine does not have (device model, firmware, VGA,
ACPI, ...) are not shown; docs/differences.md lists them.
"""

from __future__ import annotations

import json

NIL_UUID = "00000000-0000-0000-0000-000000000000"
SECINITSID_DOMU = 12  # xen/xsm/flask/policy/initial_sids: domU is the 12th initial SID
LIBXL_MAXMEM_CONSTANT = 1024  # KiB (libxl_internal.h)
CREDIT2_DEFAULT_WEIGHT = 256  # xen/common/sched/credit2.c CSCHED2_DEFAULT_WEIGHT

# xl config values (xl_parse.c parse_action_on_shutdown) -> libxl_action_on_shutdown names
# (libxl_types.idl:160, printed lower-case by libxl__enum_gen_jso).
ACTIONS = {
    "destroy": "destroy",
    "restart": "restart",
    "rename-restart": "restart_rename",
    "preserve": "preserve",
    "coredump-destroy": "coredump_destroy",
    "coredump-restart": "coredump_restart",
    "soft-reset": "soft_reset",
}

XL_ACTION_DEFAULTS = {
    "on_poweroff": "destroy",
    "on_reboot": "restart",
    "on_watchdog": "destroy",
    "on_crash": "destroy",
    "on_soft_reset": "soft-reset",
}


def _c_info(dom) -> dict:
    spec = dom.spec
    out: dict = {"type": "pv" if spec is None or spec.type == "pv" else "hvm"}
    if spec is not None and out["type"] == "hvm":
        out["hap"] = "False"  # no HAP on this host: shadow (libxl_create.c:43-44)
        out["oos"] = "True"
    if spec is not None:
        out["ssidref"] = SECINITSID_DOMU  # libxl_create.c:57
    out["name"] = dom.name
    if dom.handle != NIL_UUID:  # libxl_uuid_is_nil() is the uuid's default check
        out["uuid"] = dom.handle
    if spec is not None:
        out["run_hotplug_scripts"] = "True"
        out["driver_domain"] = "False"
        out["passthrough"] = "disabled"  # no PCI devices (libxl_create.c:1158)
        out["xend_suspend_evtchn_compat"] = "False"
    return out


def _online(dom) -> list[int]:
    """The vCPUs that are up (emu/cpu/vcpu.py `down`: taken offline by the guest)."""
    return [i for i, v in enumerate(dom.vcpus) if not getattr(v, "down", False)]


SCHED_PARAMS = {"sched": "credit2", "weight": CREDIT2_DEFAULT_WEIGHT, "cap": 0}
ARCH = {"arch_arm": {"arm_sci": {}}, "arch_x86": {}}  # structures: always present


def _b_info(dom) -> dict:
    """b_info in libxl_types.idl:586 order."""
    spec = dom.spec
    sched = {"sched_params": dict(SCHED_PARAMS)}  # libxl_domain.c:2527, credit2's two
    if spec is None:
        # dom0's stub has max_vcpus 0, so its refreshed vCPU map is empty and left out.
        mem = {"max_memkb": dom.static_max_kb, "target_memkb": dom.target_pages * 4}
        return {**mem, **sched, "type.pv": {}, "arch_arm": {"arm_sci": {}}, "arch_x86": {}}
    pv = spec.type == "pv"
    maxmem = spec.maxmem if spec.maxmem is not None else spec.memory  # MiB
    # libxl_internal.h:4698 libxl__get_targetmem_fudge(), on the stored config's sizes
    fudge = LIBXL_MAXMEM_CONSTANT if not pv and maxmem > spec.memory else 0
    out: dict = {
        "max_vcpus": len(dom.vcpus),
        "avail_vcpus": _online(dom),
        "numa_placement": "True",  # libxl_create.c:202
        "max_memkb": dom.static_max_kb,  # libxl_domain.c:2521
        "target_memkb": dom.target_pages * 4 + fudge,
    }
    if pv:
        out["video_memkb"] = 0  # libxl_create.c:371-372 (HVM's VGA memory: not shown)
    out["shadow_memkb"] = paging_memkb(spec)
    out["iommu_memkb"] = 0  # no passthrough (libxl_create.c:1236-1241)
    out["localtime"] = "False"  # libxl_create.c:222, :224
    out["disable_migrate"] = "False"
    out["blkdev_start"] = "xvda"  # libxl_create.c:114
    out["max_grant_version"] = 2  # libxl_create.c:410-412: the host offers gnttab v2
    out["device_model_stubdomain"] = "False"  # libxl_create.c:94
    out["stubdomain_memkb"] = 0  # libxl_create.c:216
    out.update(sched)
    out["claim_mode"] = "False"  # libxl_create.c:220
    out["event_channels"] = spec.max_event_channels  # xl default 1023 (libxl_create.c:231)
    if pv and spec.kernel:
        out["kernel"] = spec.kernel
    if pv and spec.cmdline:
        out["cmdline"] = spec.cmdline
    out["acpi"] = "True"  # libxl_x86.c:819
    out["bootloader_restrict"] = "False"  # libxl_create.c:435-436
    if not pv:  # libxl_create.c:402-407
        out["timer_mode"] = "no_delay_for_missed_ticks"
        out["nested_hvm"] = "False"
        out["apic"] = "True"
    out["dm_restrict"] = "False"  # libxl_create.c:245
    if pv:
        out["type.pv"] = {"slack_memkb": 0, "e820_host": "False"}  # libxl_create.c:370-377
    else:
        out["type.hvm"] = {}  # the emulated platform libxl would describe: not shown
    out.update(ARCH)
    out["arch_x86"] = {"msr_relaxed": "False"}  # libxl_x86.c:820
    out["altp2m_count"] = 0  # libxl_create.c:431 (no altp2m)
    out["vpmu"] = "False"  # libxl_create.c:95
    out["trap_unmapped_accesses"] = "False"  # libxl_x86.c:821
    return out


def paging_memkb(spec) -> int:
    """libxl_create.c:1037 libxl__get_required_paging_memory(), as libxl__domain_config_
    setdefault() stores it (libxl_create.c:1223): 1 MiB per vCPU, plus 4 KiB per MiB of
    maxmem for the P2M of a non-PV guest and 4 KiB per MiB to shadow it without HAP."""
    maxmem = spec.maxmem if spec.maxmem is not None else spec.memory  # MiB
    hvm = spec.type != "pv"
    return 4 * (256 * spec.vcpus + (int(hvm) + 1) * maxmem)


def domain_config(dom) -> dict:
    """libxl_domain_config of `dom`, as libxl_retrieve_domain_configuration() returns it."""
    config: dict = {"c_info": _c_info(dom), "b_info": _b_info(dom)}
    spec = dom.spec
    if spec is not None:
        # libxl_types.idl:1105-1109; destroy is the init_val and is left out. Keys our
        # configs do not take have xl's defaults (xl_parse.c:1650-1681).
        for key, default in XL_ACTION_DEFAULTS.items():
            action = ACTIONS.get(getattr(spec, key, default), "destroy")
            if action != "destroy":
                config[key] = action
    return config


def dumps_pretty(value: object) -> str:
    """json_object_to_json_string_ext(jso, JSON_C_TO_STRING_PRETTY) of json-c 0.18."""
    text = json.dumps(value, indent=2, separators=(",", ":"), ensure_ascii=False)
    return text.replace("/", "\\/")  # json_escape_str(): "/" is escaped; it occurs in strings only


def list_long(doms) -> str:
    """What `xl list -l` writes to stdout for these domains (puts() adds the newline)."""
    return dumps_pretty([{"domid": d.domid, "config": domain_config(d)} for d in doms]) + "\n"
