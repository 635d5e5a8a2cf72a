"""`xl pause`, `xl unpause`, `xl vcpu-list`, `xl console` (tools/xl/xl_vcpu.c, xl_console.c,
xl_misc.c)."""

from __future__ import annotations

from xenconsole.dom0.xl import XlExit, command, find_domain, getopts

CTRL_RBRACKET = 0x1D  # DEFAULT_ESCAPE_CHARACTER in tools/console/client/main.c
CONSOLE_REPLAY_BYTES = 4096  # what a console pty would have buffered before the attach


def print_bitmap(cpus: set[int], nr_cpus: int) -> str:
    """tools/xl/xl_utils.c print_bitmap(): `all`, `none`, or ranges."""
    if not cpus:
        return "none"
    if cpus >= set(range(nr_cpus)):
        return "all"
    out, i = [], 0
    s = sorted(c for c in cpus if c < nr_cpus)
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def vcpu_row(dom, v, nr_cpus: int) -> str:
    row = f"{dom.name:<32} {dom.domid:5d} {v.vcpu_id:5d}"
    if v.down:
        row += f"{'-':>5} {'-':>3}-p "
    else:
        running = "r" if v.running else "-"
        blocked = "b" if v.blocked and running == "-" else "-"
        row += f"{v.processor:5d} {running:>3}{blocked}- "
    row += f"{v.cpu_time_ns / 1e9:9.1f}  "
    aff = print_bitmap(set(range(nr_cpus)), nr_cpus)
    return row + f"{aff} / {aff}"


@command("vcpu-list", "List the VCPUs for all/some domains", "[Domain, ...]")
def main_vcpulist(sh, argv: list[str]) -> int:
    _, rest = getopts(sh, argv, "", [], "vcpu-list", 0)
    m = sh.machine
    nr_cpus = m.host.cpus
    doms = (
        [find_domain(sh, m, q) for q in rest] if rest else [m.domains[k] for k in sorted(m.domains)]
    )
    sh.println(
        f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} "
        "Affinity (Hard / Soft)"
    )
    for dom in doms:
        for v in list(dom.vcpus):
            sh.println(vcpu_row(dom, v, nr_cpus))
    return 0


def _libxl_error(sh, line: int, func: str, domid: int, what: str, err: str) -> None:
    sh.println(f"libxl: error: libxl_domain.c:{line}:{func}: Domain {domid}:{what}: {err}")


@command("pause", "Pause execution of a domain", "<Domain>", can_dryrun=True)
def main_pause(sh, argv: list[str]) -> int:
    _, rest = getopts(sh, argv, "", [], "pause", 1)
    dom = find_domain(sh, sh.machine, rest[0], "pause")
    sched = sh.machine.sched
    if dom.domid == 0 or sched is None:  # XEN_DOMCTL_pausedomain on itself: -EINVAL
        _libxl_error(sh, 585, "libxl_domain_pause", dom.domid, "Pausing domain", "Invalid argument")
        return 1
    sched.pause_domain(dom)
    return 0


@command("unpause", "Unpause a paused domain", "<Domain>", can_dryrun=True)
def main_unpause(sh, argv: list[str]) -> int:
    _, rest = getopts(sh, argv, "", [], "unpause", 1)
    dom = find_domain(sh, sh.machine, rest[0], "unpause")
    sched = sh.machine.sched
    if dom.domid == 0 or sched is None or dom.pause_count == 0:
        _libxl_error(
            sh,
            634,
            "libxl__domain_unpause_deprecated",
            dom.domid,
            "Unpausing domain",
            "Invalid argument",
        )
        return 1
    sched.unpause_domain(dom)
    return 0


class ConsoleSession:
    """The foreground `xl console`: guest lines out, Ctrl-] back to the dom0 prompt.

    Guest lines and the domain's end arrive on the thread that produced them (a vCPU's,
    or whichever destroyed the domain); the shell and its connection belong to the
    reactor's thread, so both hop there, in the order they happened (a write from another
    thread would race the reactor's own bookkeeping of the connection)."""

    def __init__(self, sh, dom, escape: int = CTRL_RBRACKET) -> None:
        self.sh = sh
        self.escape = escape
        pv = getattr(dom, "pv", None)  # a PV guest: the console ring's copy (emu/pv/event.py)
        self.con = pv.console if pv is not None else dom.hvm.console
        self.closed = False
        self._hop = _reactor_hop()

    def start(self) -> None:
        backlog = "".join(t + "\n" for t in self.con.lines)[-CONSOLE_REPLAY_BYTES:]
        if backlog:
            self.sh.write(backlog)
        self.sh.foreground = self.input  # before on_close: a gone domain closes at once
        self.con.listeners.append(self._output)
        self.con.on_close.append(self._close)

    def _output(self, text: str) -> None:
        self._hop(self.output, text)

    def _close(self) -> None:
        self._hop(self.close)

    def output(self, text: str) -> None:
        if not self.closed:
            self.sh.write(text)

    def input(self, data: bytes) -> None:
        if self.escape in data:
            self.close()
        # anything else would go to the guest's console input, which these guests don't read

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._output in self.con.listeners:
            self.con.listeners.remove(self._output)
        if self.sh.foreground == self.input:
            self.sh.foreground_done()


def _reactor_hop():
    """How to run a call on the shell's thread: the running reactor's queue when the shell
    lives on it (always queued, so calls keep their order), else at once (no reactor)."""
    from twisted.python import threadable

    if threadable.isInIOThread():
        from twisted.internet import reactor

        return reactor.callFromThread
    return lambda fn, *args: fn(*args)


@command(
    "console",
    "Attach to domain's console",
    "[options] <Domain>\n"
    "-t <type>       console type, pv , serial or vuart\n"
    "-n <number>     console number\n"
    "-e <escape>     escape character",
)
def main_console(sh, argv: list[str]) -> int:
    opts, rest = getopts(sh, argv, "n:t:e:", [], "console", 1)
    escape = CTRL_RBRACKET
    for o, a in opts:
        if o == "-t" and a not in ("pv", "serial", "vuart"):
            sh.println("console type supported are: pv, serial, vuart")
            raise XlExit(1)
        if o == "-e" and a:  # tools/console/client: "^c" is Ctrl-c, else the character
            escape = (ord(a[1].upper()) & 0x1F) if a[0] == "^" and len(a) == 2 else ord(a[0])
    dom = find_domain(sh, sh.machine, rest[0], "console")
    if dom.hvm is None and dom.pv is None:
        sh.println("Unable to attach console")
        return 1
    ConsoleSession(sh, dom, escape).start()
    return 0
