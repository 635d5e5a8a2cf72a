"""The Xen build this machine claims to be (xen/include/xen/compile.h, generated at build time).

Printed by the boot banner (emu/boot.py), `xl info` and the register dumps' header line.
"""

XEN_MAJOR, XEN_MINOR, XEN_EXTRA = 4, 22, ".0"
XEN_VERSION = f"{XEN_MAJOR}.{XEN_MINOR}{XEN_EXTRA}"
XEN_COMPILE_DATE = "Tue Nov 10 09:00:00 UTC 2026"
XEN_COMPILER = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
XEN_COMPILE_BY = "xenconsole"
XEN_COMPILE_DOMAIN = "emulated"
XEN_CHANGESET = "unavailable"
XEN_BUILD_ID = "5f3c2a9e1b7d4c6a8e0f2b4d6c8a0e1f3b5d7c9a"
XEN_COMMANDLINE = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all"


def xen_commandline(dom0_mem: int) -> str:
    """The command line the boot log and `xl info` show: dom0's size is set with dom0_mem=
    (`dom0_mem=512M`, or in KiB when it is not a whole number of MiB)."""
    size = f"{dom0_mem >> 20}M" if dom0_mem % (1 << 20) == 0 else f"{dom0_mem >> 10}K"
    return f"{XEN_COMMANDLINE} dom0_mem={size}"
