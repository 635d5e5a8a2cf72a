"""After a domain shuts down: Xen's domain_shutdown() and the toolstack's answer.

Xen records the reason (`d->shutdown_code`, shown by `xl list` as the fifth State letter
and by `xl list -v` as Reason-Code) and tells dom0; the domain's `xl create` daemon then
runs tools/xl/xl_vmcontrol.c handle_domain_death(): it looks up the action the config
gives for the reason (on_poweroff, on_reboot, on_crash, on_watchdog, on_soft_reset; xl's
defaults destroy, restart, destroy, destroy, soft-reset) and logs each step to
/var/log/xen/xl-NAME.log. `restart` destroys the domain and, after xl's two-second
sleep, creates it again from the same config (a new domid, the same UUID);
`rename-restart` first renames the old domain NAME-%Y%m%dT%H%MZ and keeps it, shut down;
`preserve` keeps the domain, shut down, until `xl destroy`.

Core dumps (coredump-destroy/-restart) and soft reset are not emulated: a config asking for
them is refused at create time, in one line that says so (docs/differences.md).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable

from emu.domain import SHUTDOWN_crash, SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend

SHUTDOWN_watchdog, SHUTDOWN_soft_reset = 4, 5  # xen/include/public/sched.h:162-163
SHUTDOWN_MAX = SHUTDOWN_soft_reset
# libxl_shutdown_reason letters, tools/xl/xl_info.c:469 (`xl list` State column).
SHUTDOWN_REASON_LETTERS = "-rscwS"

# tools/xl/xl_parse.c:55-67 action_on_shutdown_names, in libxl's enum order.
ACTIONS = (
    "destroy",
    "restart",
    "rename-restart",
    "preserve",
    "coredump-destroy",
    "coredump-restart",
    "soft-reset",
)
NOT_EMULATED = ("coredump-destroy", "coredump-restart", "soft-reset")
# tools/xl/xl_parse.c:1650-1684: the keys and xl's defaults.
DEFAULTS = {
    "on_poweroff": "destroy",
    "on_reboot": "restart",
    "on_watchdog": "destroy",
    "on_crash": "destroy",
    "on_soft_reset": "soft-reset",
}
REASON_KEY = {
    SHUTDOWN_poweroff: "on_poweroff",
    SHUTDOWN_reboot: "on_reboot",
    SHUTDOWN_crash: "on_crash",
    SHUTDOWN_watchdog: "on_watchdog",
    SHUTDOWN_soft_reset: "on_soft_reset",
}
RESTART_SLEEP = 2.0  # xl_vmcontrol.c:1128-1133: "XXX FIXME" sleep(2) before re-creating


def reason_of(dom) -> int | None:
    """d->shutdown_code as a number (None: not shut down)."""
    code = dom.shutdown_code
    if code is None:
        return None
    if isinstance(code, str):
        return max(0, SHUTDOWN_REASON_LETTERS.find(code))
    return int(code)


def action_for(spec, key: str) -> str:
    return getattr(spec, key, None) or DEFAULTS[key]


def validate(machine, spec) -> None:
    """xl_parse.c's checks, at `xl create` (a `domain_validate` hook): xl's line for an
    unknown action; ours for an action this emulator cannot carry out."""
    del machine
    for key in DEFAULTS:
        action = action_for(spec, key)
        if action not in ACTIONS:
            raise ValueError(f'Unknown {key} action "{action}" specified')  # xl_parse.c:1653
        if action in NOT_EMULATED and action != DEFAULTS[key]:
            raise ValueError(f'{key}="{action}": not emulated here (no core dumps, no soft reset)')


class XlLog:
    """The domain's `xl create` daemon log (/var/log/xen/xl-NAME.log): LOG() of
    tools/xl/xl_utils.h:55, one line per call. `write` is the spec's `xl_log` (set by dom0's
    `xl create`); a domain of the host config has none and logs nowhere."""

    def __init__(self, write: Callable[[str], None] | None) -> None:
        self.write = write
        self.pid = os.getpid()

    def __call__(self, text: str) -> None:
        if self.write is not None:
            try:
                self.write(text + "\n")
            except Exception:  # xl_utils.c dolog(): write errors are ignored
                pass


def domain_shutdown(machine, dom, reason: int) -> bool:
    """domain_shutdown() (xen/common/domain.c:1380): the first reason sticks. True if this
    call shut the domain down, False if it already was."""
    with machine.lock:
        if dom.shutdown_code is not None:
            return False
        # The letter of libxl's table (`xl list`), '?' past its end as xl_info.c:510-512.
        ok = 0 <= reason < len(SHUTDOWN_REASON_LETTERS)
        dom.shutdown_code = SHUTDOWN_REASON_LETTERS[reason] if ok else reason
    if machine.sched is not None:
        machine.sched.requeue_domain(dom)  # the vCPUs are no longer runnable
    return True


def waiting_line(dom) -> str:
    """xl_vmcontrol.c:1051, once the daemon watches the domain."""
    return f"Waiting for domain {dom.name} (domid {dom.domid}) to die [pid {os.getpid()}]"


def handle_domain_death(machine, dom, reason: int) -> None:
    """The domain's xl daemon on LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN (xl_vmcontrol.c:1078-1140
    and handle_domain_death() at :442). Runs on the caller's thread up to the destroy; a
    restart is created on a timer thread after xl's sleep."""
    spec = dom.spec
    if spec is None or not spec.monitored:
        return  # `xl create -e`: the domain stays shut down until `xl destroy`
    log = XlLog(spec.xl_log)
    domid, handle = dom.domid, dom.handle  # the config's UUID (a preserved copy gets a new one)
    log(f"Domain {domid} has shut down, reason code {reason} {reason:#x}")
    if reason == SHUTDOWN_suspend:
        log("Domain has suspended.")  # :457; the daemon goes on waiting (:1143)
        log(f"Continue waiting for domain {domid}")
        return
    key = REASON_KEY.get(reason)
    if key is None:
        log(f"Unknown shutdown reason code {reason}. Destroying domain.")
        action = "destroy"
    else:
        action = action_for(spec, key)
    log(f"Action for shutdown reason code {reason} is {action}")
    restart_spec = None
    if action == "preserve":
        log("Done. Exiting now")
        return
    if action == "rename-restart":
        suffix = time.strftime("-%Y%m%dT%H%MZ", time.gmtime())
        log(f"Preserving domain {domid} {dom.name} with suffix{suffix}")  # :560
        if not _preserve(machine, dom, suffix):
            return  # xl: "exit leaving the old domain in place"
        restart_spec = spec
    elif action in ("restart", "destroy"):
        if action == "restart":
            restart_spec = spec
        log(f"Domain {domid} needs to be cleaned up: destroying the domain")  # :509
        if machine.domains.get(domid) is dom:
            try:
                machine.destroy_domain(dom)
            except Exception:  # `xl destroy` from dom0 got there first: nothing left to do
                pass
    if restart_spec is None:
        log("Done. Exiting now")
        return
    log("Done. Rebooting now")
    again = dataclasses.replace(restart_spec, uuid=handle)
    t = threading.Timer(RESTART_SLEEP, _restart, args=(machine, again, log))
    t.daemon = True
    t.name = f"xl-{spec.name}"
    t.start()


def _preserve(machine, dom, suffix: str) -> bool:
    """libxl_domain_preserve() (libxl_domain.c:209): the shut-down domain gets the name
    NAME+suffix and a new UUID, and stays."""
    import uuid

    with machine.lock:
        new = dom.name + suffix
        if machine.find_domain(new) is not None:
            return False
        dom.name = new
        dom.handle = str(uuid.uuid4())
    return True


def _restart(machine, spec, log: XlLog) -> None:
    """`goto start` of create_domain() (xl_vmcontrol.c:1134): the same config again,
    never paused, a new domid."""
    sched = machine.sched
    if sched is not None and sched.stopping:
        return  # the machine itself went away meanwhile
    try:
        dom = machine.create_domain(spec)
    except Exception as e:  # a DomainError's text is xl's line; the daemon ends, the host runs on
        log(str(e))
        return
    log(waiting_line(dom))
