"""Issue 12 items 14 and 15: `xl create` needs a config file, dom0's /etc/xen example
configs, `xl list -l`'s JSON, xl's errors for a domid that does not exist, `virt_caps`.

Formats are Xen 4.22's (RELEASE-4.22.0); each assertion cites the file:line it follows."""

from __future__ import annotations

import json

import pytest

from emu.boot import boot_sync
from emu.host import HostConfig
from emu.machine import Machine
from xenconsole.dom0.fs import Dom0Fs
from xenconsole.dom0.libxl_json import dumps_pretty
from xenconsole.dom0.shell import Dom0Shell

WORKLOADS = {
    "idle": "idle",
    "touch": "touch:pages=1000,write=1",
    "random": "random:ws=1000",
    "stream": "stream:pages=1000",
    "asm": "asm:/root/hello.S",
}


@pytest.fixture
def sh():
    m = boot_sync(Machine(HostConfig(memory=512 << 20, cpus=2, dom0_mem=128 << 20), guests=False))
    fs = Dom0Fs.private()
    out = bytearray()
    shell = Dom0Shell(m, out.extend, fs)
    shell.out = out
    yield shell
    m.shutdown()
    fs.close()


def run(sh: Dom0Shell, line: str) -> tuple[int, str]:
    sh.out.clear()
    status = sh.run(line)
    return status, sh.out.decode().replace("\r\n", "\n")


# ---- item 14: a config file is required ----------------------------------------------------


@pytest.mark.parametrize("line", ["xl create", "xl create 'name=\"t\"' memory=64", "xl create -p"])
def test_create_without_a_config_file_fails_as_xl(sh, line):
    # tools/xl/xl_vmcontrol.c:838-840: no config file and none in a save file; main_create
    # (xl_vmcontrol.c:1313) returns -ERROR_INVAL, 6 (tools/libs/light/libxl_types.idl:53).
    # KEY=VALUE arguments alone are no config (xl_vmcontrol.c:823 appends them to a file's).
    assert run(sh, line) == (6, "Config file not specified and none in save file\n")
    assert list(sh.machine.domains) == [0]


def test_the_documented_way_creates_the_touch_guest(sh):
    status, out = run(
        sh,
        "xl create /etc/xen/touch.cfg 'name=\"t\"' 'memory=64' "
        "'workload=\"touch:pages=1000,write=1\"'",
    )
    # xl_vmcontrol.c:847 "Parsing config from %s\n"
    assert (status, out) == (0, "Parsing config from /etc/xen/touch.cfg\n")
    dom = sh.machine.find_domain("t")
    assert (dom.domid, dom.tot_pages, dom.spec.type) == (1, 64 << 8, "hvm")
    assert dom.spec.workload == "touch:pages=1000,write=1"


@pytest.mark.parametrize("name", WORKLOADS)
def test_each_example_config_creates_its_guest(sh, name):
    path = f"/etc/xen/{name}.cfg"
    text = sh.fs.read(path).decode()
    assert f'name = "{name}"' in text and 'type = "hvm"' in text
    assert run(sh, f"xl create {path}") == (0, f"Parsing config from {path}\n")
    dom = sh.machine.find_domain(name)
    assert dom is not None and dom.spec.workload == WORKLOADS[name]
    # Arguments after the file override it (they are appended: xl_vmcontrol.c:831).
    assert run(sh, f"xl create -q {path} 'name=\"{name}2\"' memory=8 vcpus=2") == (0, "")
    dom2 = sh.machine.find_domain(f"{name}2")
    assert (dom2.tot_pages, len(dom2.vcpus)) == (8 << 8, 2)


def test_arguments_are_parsed_with_the_file_and_a_bare_word_is_a_syntax_error(sh):
    # The arguments become lines of the config (xl_vmcontrol.c:831 "\n%s\n", each argument
    # ended by "\n" in main_create, xl_vmcontrol.c:1300-1301): touch.cfg's 15 lines, an empty
    # line 16, then the arguments from line 17. `t` is an IDENT (libxlu_cfg_l.l:55) where
    # the grammar wants STRING, NUMBER or '[' (libxlu_cfg_y.y:33 %error-verbose); the line
    # is libxlu_cfg.c:699's and xl gives up with xl_parse.c:1391.
    assert sh.fs.read("/etc/xen/touch.cfg").decode().count("\n") == 15
    assert run(sh, "xl create /etc/xen/touch.cfg 'memory=8' name=t") == (
        1,
        "Parsing config from /etc/xen/touch.cfg\n"
        "/etc/xen/touch.cfg:18: config parsing error near `t': syntax error, unexpected "
        "IDENT, expecting STRING or NUMBER or '['\n"
        "Failed to parse config: Invalid argument\n",
    )
    assert list(sh.machine.domains) == [0]


# ---- item 15: libxl's errors for a domid that does not exist -------------------------------

NO_DOMINFO = (
    # tools/libs/light/libxl_dom.c:37 (libxl__domain_type); ESRCH from
    # xen/common/domctl.c:371; "libxl: error: " by xtl_logger_stdio.c:75-82, "Domain %u:"
    # by libxl_internal.c:238-239.
    "libxl: error: libxl_dom.c:37:libxl__domain_type: Domain 9:unable to get dominfo: "
    "No such process\n"
)


def test_destroy_of_a_missing_domid(sh):
    # libxl_domain.c:356, :1181, :1135, :1062; then xl_vmcontrol.c:94 with
    # ERROR_DOMAIN_NOTFOUND (-21, libxl_types.idl:68) and exit(EXIT_FAILURE).
    assert run(sh, "xl destroy 9") == (
        1,
        "libxl: error: libxl_domain.c:356:libxl_domain_info: Domain 9:Getting domain info: "
        "No such process\n"
        "libxl: error: libxl_domain.c:1181:libxl__destroy_domid: Domain 9:Non-existant domain\n"
        "libxl: error: libxl_domain.c:1135:domain_destroy_callback: Domain 9:Unable to destroy "
        "guest\n"
        "libxl: error: libxl_domain.c:1062:domain_destroy_cb: Domain 9:Destruction of domain "
        "failed\n"
        "destroy failed (rc=-21)\n",
    )


def test_pause_unpause_console_of_a_missing_domid(sh):
    # libxl_domain.c:585; xl's main_pause ignores libxl's answer (xl_vmcontrol.c:75, :105-107).
    assert run(sh, "xl pause 9") == (
        0,
        "libxl: error: libxl_domain.c:585:libxl_domain_pause: Domain 9:Pausing domain: "
        "No such process\n",
    )
    # libxl__domain_unpause (libxl_domain.c:657) asks libxl__domain_type first; xl ignores it.
    assert run(sh, "xl unpause 9") == (0, NO_DOMINFO)
    # libxl__primary_console_find (libxl_console.c:146), then xl_console.c:59-60.
    assert run(sh, "xl console 9") == (1, NO_DOMINFO + "Unable to attach console\n")
    # Beyond DOMID_FIRST_RESERVED no "Domain %u:" (libxl_utils.c:1207).
    assert run(sh, "xl unpause 32752") == (
        0,
        "libxl: error: libxl_dom.c:37:libxl__domain_type: unable to get dominfo: No such process\n",
    )
    # xl list: libxl_domain_info's line, then xl_info.c:688-690 (on stderr).
    assert run(sh, "xl list -l 009") == (
        1,
        "libxl: error: libxl_domain.c:356:libxl_domain_info: Domain 9:Getting domain info: "
        "No such process\nError: Domain '009' does not exist.\n",
    )
    # A name is looked up (libxl_utils.c:63-89) and refused by xl_utils.c:140.
    assert run(sh, "xl destroy nosuch") == (1, "nosuch is an invalid domain identifier (rc=-6)\n")


# ---- item 15: xl list -l ---------------------------------------------------------------------


def test_list_long_is_libxls_config_in_json_c_pretty_form(sh):
    assert run(sh, "xl create -q /etc/xen/asm.cfg 'name=\"a\"' vcpus=2 maxmem=8")[0] == 0
    dom = sh.machine.find_domain("a")
    # The domain's own on_reboot action (xl's default is restart, xl_parse.c:1657-1658);
    # destroy, libxl's init_val, is left out.
    action = {"destroy": None, "restart": "restart"}[dom.spec.on_reboot]
    ON_REBOOT = f'      "on_reboot":"{action}",\n' if action else ""
    status, out = run(sh, "xl list -l")
    assert status == 0
    # xl_info.c:543-620: an array of {"domid", "config"}, printed with
    # json_object_to_json_string_ext(JSON_C_TO_STRING_PRETTY) (xl_info.c:606) and puts().
    # json-c 0.18 json_object.c:636-688 / 1407-1447: two spaces a level, "key":value, no
    # space after the colon, "/" escaped (json_escape_str); libxl_types.idl order, defaults
    # left out (gentypes.py:363-377).
    assert out == (
        "[\n"
        "  {\n"
        '    "domid":0,\n'
        '    "config":{\n'
        '      "c_info":{\n'
        '        "type":"pv",\n'  # tools/helpers/init-dom-json.c: dom0's stub config
        '        "name":"Domain-0"\n'  # nil uuid: left out (libxl_uuid_is_nil)
        "      },\n"
        '      "b_info":{\n'
        f'        "max_memkb":{sh.machine.domains[0].static_max_kb},\n'
        '        "target_memkb":131072,\n'
        '        "sched_params":{\n'
        '          "sched":"credit2",\n'
        '          "weight":256,\n'
        '          "cap":0\n'
        "        },\n"
        '        "type.pv":{},\n'
        '        "arch_arm":{\n'
        '          "arm_sci":{}\n'
        "        },\n"
        '        "arch_x86":{}\n'
        "      }\n"
        "    }\n"
        "  },\n"
        "  {\n"
        '    "domid":1,\n'
        '    "config":{\n'
        '      "c_info":{\n'
        '        "type":"hvm",\n'
        '        "hap":"False",\n'  # libxl_create.c:41-50: no HAP on this host, shadow
        '        "oos":"True",\n'
        '        "ssidref":12,\n'  # libxl_create.c:57 SECINITSID_DOMU
        '        "name":"a",\n'
        f'        "uuid":"{dom.handle}",\n'
        '        "run_hotplug_scripts":"True",\n'  # libxl_create.c:53-59
        '        "driver_domain":"False",\n'
        '        "passthrough":"disabled",\n'  # libxl_create.c:1158
        '        "xend_suspend_evtchn_compat":"False"\n'
        "      },\n"
        '      "b_info":{\n'
        '        "max_vcpus":2,\n'
        '        "avail_vcpus":[\n'
        "          0,\n"
        "          1\n"
        "        ],\n"
        '        "numa_placement":"True",\n'  # libxl_create.c:202
        '        "max_memkb":8192,\n'  # libxl_domain.c:2521 static-max
        '        "target_memkb":5120,\n'  # target + LIBXL_MAXMEM_CONSTANT (libxl_internal.h:4701)
        '        "shadow_memkb":2112,\n'  # libxl_create.c:1054: 4 * (256 * 2 + 2 * 8)
        '        "iommu_memkb":0,\n'  # libxl_create.c:1236-1241
        '        "localtime":"False",\n'  # libxl_create.c:222
        '        "disable_migrate":"False",\n'  # libxl_create.c:224
        '        "blkdev_start":"xvda",\n'  # libxl_create.c:114
        '        "max_grant_version":2,\n'  # libxl_create.c:410-412
        '        "device_model_stubdomain":"False",\n'  # libxl_create.c:94
        '        "stubdomain_memkb":0,\n'  # libxl_create.c:216
        '        "sched_params":{\n'  # libxl_domain.c:2527 (credit2: weight, cap)
        '          "sched":"credit2",\n'
        '          "weight":256,\n'
        '          "cap":0\n'
        "        },\n"
        '        "claim_mode":"False",\n'  # libxl_create.c:220
        '        "event_channels":1023,\n'  # libxl_create.c:230-231
        '        "acpi":"True",\n'  # libxl_x86.c:819
        '        "bootloader_restrict":"False",\n'  # libxl_create.c:435-436
        '        "timer_mode":"no_delay_for_missed_ticks",\n'  # libxl_create.c:402-407
        '        "nested_hvm":"False",\n'
        '        "apic":"True",\n'
        '        "dm_restrict":"False",\n'  # libxl_create.c:245
        '        "type.hvm":{},\n'
        '        "arch_arm":{\n'
        '          "arm_sci":{}\n'
        "        },\n"
        '        "arch_x86":{\n'
        '          "msr_relaxed":"False"\n'  # libxl_x86.c:820
        "        },\n"
        '        "altp2m_count":0,\n'  # libxl_create.c:431
        '        "vpmu":"False",\n'  # libxl_create.c:95
        '        "trap_unmapped_accesses":"False"\n'  # libxl_x86.c:821
        "      },\n"
        f"{ON_REBOOT}"
        '      "on_soft_reset":"soft_reset"\n'  # xl_parse.c:1679-1680, xl's default
        "    }\n"
        "  }\n"
        "]\n"
    )
    assert json.loads(out)[1]["config"]["c_info"]["name"] == "a"


def test_list_long_follows_the_domain(sh):
    assert run(sh, "xl create -q /etc/xen/idle.cfg 'name=\"w\"' memory=64 maxmem=64")[0] == 0
    assert run(sh, "xl mem-set w 32") == (0, "")
    status, out = run(sh, "xl list -l w")
    cfg = json.loads(out)[0]["config"]
    assert status == 0 and json.loads(out)[0]["domid"] == 1
    # libxl_domain.c:2509-2521: target from xenstore (+ fudge: maxmem > memory no longer
    # matters, it is the stored config's sizes), static-max as set by mem-set.
    dom = sh.machine.find_domain("w")
    assert cfg["b_info"]["target_memkb"] == dom.target_pages * 4 == 32 << 10
    assert cfg["b_info"]["max_memkb"] == dom.static_max_kb


def test_json_c_escapes_slashes_and_keeps_utf8():
    # json-c json_object.c:186-246: "/" -> "\/", control characters \u00XX, UTF-8 as is.
    assert dumps_pretty({"k": "a/b\x01é"}) == '{\n  "k":"a\\/b\\u0001é"\n}'
    assert dumps_pretty({"e": {}, "l": []}) == '{\n  "e":{},\n  "l":[]\n}'


def test_virt_caps(sh):
    # xl_info.c:282-294 over xen/arch/x86/sysctl.c:98-105 and xen/common/sysctl.c:267-283:
    # PV and HVM built in, no HAP (shadow), no IOMMU, vmtrace or vPMU, grant tables v1 and v2.
    assert run(sh, "xl info virt_caps") == (0, "pv hvm shadow gnttab-v1 gnttab-v2\n")


@pytest.mark.timeout(600)
def test_list_long_of_a_pv_guest():
    from pv_helpers import small_machine, xtf_tree

    cfg = xtf_tree() / "tests" / "example" / "test-pv64-example.cfg"
    m, _out = small_machine()
    out = bytearray()
    sh = Dom0Shell(m, out.extend, Dom0Fs("/"))  # XTF's files by host path
    try:
        assert sh.run(f"xl create -q -p {cfg}") == 0
        out.clear()
        assert sh.run("xl list -l test-pv64-example") == 0
        text = out.decode().replace("\r\n", "\n")
        dom = m.find_domain("test-pv64-example")
        kernel = str(cfg.parent / "test-pv64-example")
        # json_escape_str() escapes every "/" of the kernel's path (json-c json_object.c:203)
        assert '    "kernel":"' + kernel.replace("/", "\\/") + '",\n' in text
        config = json.loads(text)[0]["config"]
        assert config["c_info"] == {
            "type": "pv",  # no hap/oos for PV (libxl_create.c:40)
            "ssidref": 12,
            "name": "test-pv64-example",
            "uuid": dom.handle,
            "run_hotplug_scripts": "True",
            "driver_domain": "False",
            "passthrough": "disabled",
            "xend_suspend_evtchn_compat": "False",
        }
        b_info = config["b_info"]
        assert list(b_info)[:6] == [
            "max_vcpus",
            "avail_vcpus",
            "numa_placement",
            "max_memkb",
            "target_memkb",
            "video_memkb",  # 0 for PV (libxl_create.c:371-372)
        ]
        assert (b_info["max_memkb"], b_info["target_memkb"]) == (128 << 10, 128 << 10)
        # libxl_create.c:1054 for PV: 4 * (256 * 1 + 1 * 128)
        assert b_info["shadow_memkb"] == 1536 and b_info["kernel"] == kernel
        assert "cmdline" not in b_info and "timer_mode" not in b_info
        assert b_info["type.pv"] == {"slack_memkb": 0, "e820_host": "False"}  # :370-377
    finally:
        m.shutdown()
