"""`xl mem-set`, `xl mem-max` (tools/xl/xl_mem.c, tools/libs/light/libxl_mem.c)."""

from __future__ import annotations

import re

from xenconsole.dom0.xl import XlExit, command, find_domain, getopts

LIBXL_MIN_DOM0_MEM_KB = 128 * 1024
LIBXL_MAXMEM_CONSTANT_KB = 1024
U64 = 1 << 64
_STRTOLL = re.compile(r"^\s*([+-]?\d+)")


def _wrap64(x: int) -> int:
    """C int64 arithmetic: shifts past the top wrap around."""
    x &= U64 - 1
    return x - U64 if x >= 1 << 63 else x


def parse_mem_size_kb(mem: str) -> int:
    """xl_parse.c parse_mem_size_kb(): -1 on failure; default unit MB; b k m g t.

    Unlike xl, a negative size (or one that overflows to negative) is refused here too:
    libxl would take it as a huge unsigned value.
    """
    m = _STRTOLL.match(mem)
    if m:
        kbytes = max(-(1 << 63), min(int(m.group(1)), (1 << 63) - 1))  # strtoll saturates
        rest = mem[m.end() :]
    else:
        kbytes, rest = 0, mem
    if len(rest) > 1:
        return -1
    suffix = rest.lower()
    shifts = {"t": 30, "g": 20, "": 10, "m": 10, "k": 0}
    if suffix in shifts:
        kb = _wrap64(kbytes << shifts[suffix])
    elif suffix == "b":
        kb = kbytes >> 10
    else:
        return -1
    return -1 if kb < 0 else kb


def _domain_and_size(sh, argv: list[str], helpstr: str):
    """`<Domain> <MemMB...>`: (machine, domain, size text, KiB); xl's errors end the command."""
    _opts, rest = getopts(sh, argv, "", [], helpstr, 2)
    machine = sh.machine
    dom = find_domain(sh, machine, rest[0])
    mem = rest[1]
    kb = parse_mem_size_kb(mem)
    if kb == -1:
        sh.println(f"invalid memory size: {mem}")
        raise XlExit(1)
    return machine, dom, mem, kb


def _libxl_error(sh, line: int, func: str, domid: int, msg: str) -> None:
    sh.println(f"libxl: error: libxl_mem.c:{line}:{func}: Domain {domid}:{msg}")


@command(
    "mem-set",
    "Set the current memory usage for a domain",
    "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>",
    can_dryrun=True,
)
def main_memset(sh, argv: list[str]) -> int:
    machine, dom, mem, kb = _domain_and_size(sh, argv, "mem-set")
    new_target_kb = kb % U64  # libxl takes it as uint64_t
    fail = f"cannot set domid {dom.domid} dynamic max memory to : {mem}"
    if new_target_kb > dom.static_max_kb:
        _libxl_error(
            sh,
            279,
            "libxl_set_memory_target",
            dom.domid,
            "memory_dynamic_max must be less than or equal to memory_static_max",
        )
        sh.println(fail)
        return 1
    if dom.domid == 0 and new_target_kb < LIBXL_MIN_DOM0_MEM_KB:
        _libxl_error(
            sh,
            288,
            "libxl_set_memory_target",
            dom.domid,
            f"New target {new_target_kb} for dom0 is below the minimum threshold",
        )
        sh.println(fail)
        return 1
    # enforce=1: max_pages follows the target (plus libxl's constant slack).
    machine.set_max_pages(dom, (new_target_kb + LIBXL_MAXMEM_CONSTANT_KB) // 4)
    if dom.domid == 0:
        # dom0's kernel is not emulated: its balloon driver is modelled as reaching the
        # target at once (emu/mm/memory.py set_target).
        machine.set_target(dom, new_target_kb // 4)
        return 0
    # libxl_set_memory_target() (libxl_mem.c:180-330) only writes memory/target: the
    # guest's own balloon driver, if it has one, watches that key and gives frames back
    # (the built-in guest kernel's does, emu/guest/kernel.S); a guest without one keeps
    # its frames. (xc_domain_set_pod_target() has nothing to do: no populate-on-demand.)
    dom.target_pages = new_target_kb // 4
    xs = getattr(getattr(machine, "pv", None), "xenstore", None)
    if xs is not None and dom.domid in machine.domains:
        xs.write(f"/local/domain/{dom.domid}/memory/target", str(new_target_kb))
    return 0


@command(
    "mem-max",
    "Set the maximum amount reservation for a domain",
    "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>",
    can_dryrun=True,
)
def main_memmax(sh, argv: list[str]) -> int:
    machine, dom, mem, kb = _domain_and_size(sh, argv, "mem-max")
    max_kb = kb % U64
    if max_kb < dom.target_pages * 4:
        _libxl_error(
            sh,
            60,
            "libxl_domain_setmaxmem",
            dom.domid,
            "memory_static_max must be greater than or or equal to memory_dynamic_max",
        )
        sh.println(f"cannot set domid {dom.domid} static max memory to : {mem}")
        return 1
    machine.set_max_pages(dom, (max_kb + LIBXL_MAXMEM_CONSTANT_KB) // 4)
    dom.static_max_kb = max_kb
    return 0
