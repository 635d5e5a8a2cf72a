"""Event channels (2-level ABI here; the FIFO ABI a guest may switch to in
emu/pv/event_fifo.py), sched_op, the guest's console_io line buffer, and dom0's
console daemon for the PV console ring.

Event channels (common/event_channel.c, event_2l.c): port 0 is reserved; the builder's
store and console ports are allocated unbound towards dom0 (ports 1 and 2 on a fresh
domain). dom0's console daemon binds the console port when it takes the domain on
(xenconsoled's interdomain bind); no xenstored runs yet, so the store port stays unbound.
Setting a port pending follows evtchn_2l_set_pending(): pending bit, then, if unmasked and
the selector bit was clear, `evtchn_upcall_pending`; a vCPU polling that port wakes.

The console daemon (tools/console/daemon/io.c's role): on a notification from the guest it
drains `out[]` of the ring page (advancing `out_cons`), notifies back, and keeps the text
for `xl console` (the same interface emu/hvm.py's GuestConsole offers: `lines`,
`listeners`, `on_close`).
"""

from __future__ import annotations

import struct
import threading
from collections import deque

from emu.pv import guest
from emu.pv.guest import GuestFault
from emu.pv.mm import EFAULT, EINVAL, ENOSYS, ESRCH

ECS_FREE, ECS_RESERVED, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ, ECS_VIRQ, ECS_IPI = range(7)
STATUS_OF = {
    ECS_FREE: 0,
    ECS_RESERVED: 0,
    ECS_UNBOUND: 1,
    ECS_INTERDOMAIN: 2,
    ECS_VIRQ: 4,
    ECS_IPI: 5,
}
NR_EVTCHN_2L = 4096
MAX_EVTCHN_PORT = 1023  # libxl's default max_event_channels for a domU
ENOSPC = 28
DOMID_SELF = 0x7FF0
EVTCHN_PENDING_OFF, EVTCHN_MASK_OFF = 2048, 2560
CONSOLE_LINE = 256
HISTORY = 1000
# xencons_interface (public/io/console.h)
OUT_OFF, OUT_SIZE, IN_CONS, OUT_CONS, OUT_PROD = 1024, 2048, 3072, 3080, 3084


class Channel:
    def __init__(self, state: int, remote_dom: int = 0, remote_port: int = 0) -> None:
        self.state = state
        self.remote_dom = remote_dom
        self.remote_port = remote_port
        self.vcpu = 0
        self.virq = 0
        self.consumer = None  # Xen-side consumer (dom0's daemons): fn() on send
        self.priority = 7  # EVTCHN_FIFO_PRIORITY_DEFAULT (evtchn_fifo_init())
        self.fifo_pending = False  # pending before its FIFO event array page existed


class EventChannels:
    """A domain's ports (`d->evtchn`)."""

    def __init__(self, machine, dom) -> None:
        self.machine = machine
        self.dom = dom
        self.ports: dict[int, Channel] = {0: Channel(ECS_RESERVED)}
        self.max_port = MAX_EVTCHN_PORT
        self.fifo = None  # emu/pv/event_fifo.py FifoDomain once the guest switched to FIFO

    def alloc_unbound(self, remote_dom: int) -> int:
        """get_free_port(): the lowest free port, -ENOSPC above the domain's limit."""
        port = next((p for p in range(1, self.max_port + 1) if p not in self.ports), None)
        if port is None:
            return -ENOSPC
        self.ports[port] = Channel(ECS_UNBOUND, remote_dom)
        return port

    def set_pending(self, port: int) -> None:
        """evtchn_port_set_pending(): the FIFO ABI's once the guest chose it, else 2-level."""
        if self.fifo is not None:
            if self.fifo.set_pending(port):
                self.check_pollers(port)
            return
        self.set_pending_2l(port)

    def mark_events_pending(self, vid: int) -> None:
        """vcpu_mark_events_pending(): vcpu_info.evtchn_upcall_pending."""
        self.machine.ram.u8[(self.dom.pv.shared_info_mfn << 12) + vid * 64] = 1

    def check_pollers(self, port: int) -> None:
        """evtchn_check_pollers(): a vCPU polling `port` wakes."""
        for v in self.dom.vcpus:
            polling = getattr(v, "poll_ports", None)
            if polling is not None and port in polling:
                v.poll_ports = None
                self.machine.sched.wake(v)

    def set_pending_2l(self, port: int) -> None:
        """evtchn_2l_set_pending() in the domain's shared_info."""
        dom = self.dom
        ram = self.machine.ram
        si = dom.xenpage_mfns[0] << 12  # shared_info (d->shared_info, PV and HVM alike)
        word, bit = port // 64, 1 << (port % 64)
        pend = si + EVTCHN_PENDING_OFF + 8 * word
        old = int.from_bytes(ram.mm[pend : pend + 8], "little")
        ram.mm[pend : pend + 8] = (old | bit).to_bytes(8, "little")
        if old & bit:
            return
        ch = self.ports.get(port)
        vid = ch.vcpu if ch else 0
        mask = int.from_bytes(
            ram.mm[si + EVTCHN_MASK_OFF + 8 * word : si + EVTCHN_MASK_OFF + 8 * word + 8], "little"
        )
        if not mask & bit:
            vi = si + vid * 64
            sel = int.from_bytes(ram.mm[vi + 8 : vi + 16], "little")
            if not sel & (1 << word):
                ram.mm[vi + 8 : vi + 16] = (sel | (1 << word)).to_bytes(8, "little")
                ram.u8[vi] = 1  # evtchn_upcall_pending
        self.check_pollers(port)

    def _bit(self, off: int, port: int) -> int:
        """The machine address of the 64-bit word of shared_info's array at `off` for `port`."""
        return (self.dom.pv.shared_info_mfn << 12) + off + 8 * (port // 64)

    def _test_and_change(self, ma: int, bit: int, set_: bool) -> bool:
        mm = self.machine.ram.mm
        old = int.from_bytes(mm[ma : ma + 8], "little")
        new = old | bit if set_ else old & ~bit
        mm[ma : ma + 8] = new.to_bytes(8, "little")
        return bool(old & bit)

    def unmask(self, port: int) -> int:
        """evtchn_unmask() (event_channel.c:1251-1266) with evtchn_2l_unmask()
        (event_2l.c:51-68) or evtchn_fifo_unmask()."""
        ch = self.ports.get(port)
        if ch is None:
            return -EINVAL
        if self.fifo is not None:
            self.fifo.unmask(port)
            return 0
        bit = 1 << (port % 64)
        if (
            self._test_and_change(self._bit(EVTCHN_MASK_OFF, port), bit, False)
            and self.pending_2l(port)
            and not self._test_and_change(
                (self.dom.pv.shared_info_mfn << 12) + ch.vcpu * 64 + 8, 1 << (port // 64), True
            )
        ):
            self.mark_events_pending(ch.vcpu)
        return 0

    def clear_pending(self, port: int) -> None:
        """evtchn_port_clear_pending() (evtchn_free(): no stale event on a re-bind)."""
        if self.fifo is not None:
            self.fifo.clear_pending(port)
        else:
            self._test_and_change(self._bit(EVTCHN_PENDING_OFF, port), 1 << (port % 64), False)

    def destroy(self) -> None:
        """evtchn_destroy(): the FIFO ABI's pages let go."""
        if self.fifo is not None:
            self.fifo.destroy()
            self.fifo = None

    def pending(self, port: int) -> bool:
        if self.fifo is not None:
            return self.fifo.is_pending(port)
        return self.pending_2l(port)

    def pending_2l(self, port: int) -> bool:
        si = self.dom.xenpage_mfns[0] << 12  # shared_info: a PV or an HVM guest's
        off = si + EVTCHN_PENDING_OFF + 8 * (port // 64)
        return bool(int.from_bytes(self.machine.ram.mm[off : off + 8], "little") >> (port % 64) & 1)

    def send(self, port: int) -> int:
        ch = self.ports.get(port)
        if ch is None or port == 0:
            return -EINVAL
        if ch.state == ECS_INTERDOMAIN:
            if ch.consumer is not None:
                ch.consumer()
            return 0
        if ch.state == ECS_IPI:
            self.set_pending(port)
            return 0
        if ch.state == ECS_UNBOUND:
            return 0
        return -EINVAL


def event_channel_op(vcpu, cmd: int, arg: int) -> int:
    ev = vcpu.domain.pv.evtchn
    try:
        if cmd == 4:  # EVTCHNOP_send
            (port,) = struct.unpack("<I", guest.read(vcpu, arg, 4))
            return ev.send(port)
        if cmd == 5:  # EVTCHNOP_status
            dom, port = struct.unpack("<H2xI", guest.read(vcpu, arg, 8))
            if dom not in (DOMID_SELF, vcpu.domain.domid):
                return -ESRCH
            ch = ev.ports.get(port)
            if port >= NR_EVTCHN_2L:
                return -EINVAL
            state = ch.state if ch else ECS_FREE
            out = struct.pack("<II", STATUS_OF.get(state, 0), ch.vcpu if ch else 0)
            if state == ECS_UNBOUND:
                out += struct.pack("<H", ch.remote_dom)
            elif state == ECS_INTERDOMAIN:
                out += struct.pack("<H2xI", ch.remote_dom, ch.remote_port)
            elif state == ECS_VIRQ:
                out += struct.pack("<I", ch.virq)
            guest.write(vcpu, arg + 8, out)
            return 0
        if cmd == 6:  # EVTCHNOP_alloc_unbound
            dom, remote = struct.unpack("<HH", guest.read(vcpu, arg, 4))
            if dom not in (DOMID_SELF, vcpu.domain.domid):
                return -1  # -EPERM: only for oneself without privilege
            rdom = vcpu.domain.domid if remote == DOMID_SELF else remote
            if rdom not in vcpu.machine.domains:
                return -ESRCH
            port = ev.alloc_unbound(rdom)
            if port < 0:
                return port
            guest.write(vcpu, arg + 4, struct.pack("<I", port))
            return 0
        if cmd == 3:  # EVTCHNOP_close
            (port,) = struct.unpack("<I", guest.read(vcpu, arg, 4))
            ch = ev.ports.get(port)
            if ch is None or port == 0:
                return -EINVAL
            ev.clear_pending(port)
            del ev.ports[port]
            return 0
        if cmd == 9:  # EVTCHNOP_unmask
            (port,) = struct.unpack("<I", guest.read(vcpu, arg, 4))
            return ev.unmask(port)
        if cmd in (11, 12, 13):
            return _fifo_op(vcpu, ev, cmd, arg)
    except GuestFault:
        return -EFAULT
    return -ENOSYS


def _fifo_op(vcpu, ev: EventChannels, cmd: int, arg: int) -> int:
    """EVTCHNOP_init_control / expand_array / set_priority (event_channel.c:1482-1507)."""
    from emu.pv import event_fifo

    if cmd == 11:
        gfn, offset, vid = struct.unpack("<QII", guest.read(vcpu, arg, 16))
        rc = event_fifo.init_control(ev, vid, gfn, offset)
        if rc == 0:  # link_bits is the OUT field, copied back on success
            guest.write(vcpu, arg + 16, bytes([event_fifo.LINK_BITS]))
        return rc
    if cmd == 12:
        (gfn,) = struct.unpack("<Q", guest.read(vcpu, arg, 8))
        return event_fifo.expand_array(ev, gfn)
    port, priority = struct.unpack("<II", guest.read(vcpu, arg, 8))
    return event_fifo.set_priority(ev, port, priority)


# ---- sched_op --------------------------------------------------------------------------------


def sched_op(vcpu, cmd: int, arg: int) -> int:
    """common/sched/core.c:1907-...: yield, block, shutdown, poll."""
    from emu.pv.traps import set_upcall_mask

    if cmd == 0:  # SCHEDOP_yield
        vcpu.stop(("yield",))
        return 0
    if cmd == 1:  # SCHEDOP_block: events enabled first
        set_upcall_mask(vcpu, 0)
        vcpu.stop(("block",))
        return 0
    if cmd == 2:  # SCHEDOP_shutdown
        try:
            reason = guest.read_u32(vcpu, arg)
        except GuestFault:
            return -EFAULT
        vcpu.stop(("shutdown", reason))
        return 0
    if cmd == 3:  # SCHEDOP_poll
        try:
            ports_va, nr, timeout = struct.unpack("<QI4xQ", guest.read(vcpu, arg, 24))
            ports = list(struct.unpack(f"<{nr}I", guest.read(vcpu, ports_va, 4 * nr))) if nr else []
        except GuestFault:
            return -EFAULT
        if nr > 128:
            return -EINVAL
        ev = vcpu.domain.pv.evtchn
        for p in ports:
            if p >= NR_EVTCHN_2L:
                return -EINVAL
        if any(ev.pending(p) for p in ports):
            return 0
        vcpu.poll_ports = ports
        vcpu.wake_at = timeout or None
        vcpu.stop(("block",))
        return 0
    return -ENOSYS


# ---- console -----------------------------------------------------------------------------------


class ConsoleIO:
    """guest_console_write() (drivers/char/console.c:753-819) for a domU."""

    def __init__(self, machine, domid: int) -> None:
        self.machine = machine
        self.domid = domid
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        while data:
            chunk, data = data[:127], data[127:]
            nl = chunk.find(b"\n")
            if nl >= 0:
                data = chunk[nl + 1 :] + data
                chunk = chunk[:nl]
            text = bytes(c for c in chunk if 0x20 <= c < 0x7F or c == 0x09)
            if nl < 0 and len(self.buf) + len(text) < CONSOLE_LINE - 1:
                self.buf += text
                continue
            line = (self.buf + text).decode("latin-1")
            self.buf.clear()
            self.machine.console.guest_printk(self.domid, line + "\n")


class _Closers(list):
    """`on_close` callbacks; one added after the domain went away runs at once (so an
    `xl console` attached too late still returns, as the real one does)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def append(self, fn) -> None:  # type: ignore[override]
        if self.closed:
            fn()
        else:
            super().append(fn)


class PVConsole:
    """dom0's console daemon for one domain's PV ring; what `xl console` attaches to."""

    def __init__(self, machine, dom, ring_mfn: int, port: int) -> None:
        self.machine = machine
        self.dom = dom
        self.ring = ring_mfn << 12
        self.port = port
        self.lines: deque[str] = deque(maxlen=HISTORY)
        self.listeners: list = []
        self.on_close = _Closers()
        self.partial = ""
        self.lock = threading.Lock()

    def connect(self, evtchn: EventChannels) -> None:
        """Bind the console port interdomain to dom0 and consume its notifications."""
        ch = evtchn.ports[self.port]
        ch.state, ch.remote_dom, ch.remote_port = ECS_INTERDOMAIN, 0, self.port
        ch.consumer = self.drain

    def drain(self) -> None:
        mm = self.machine.ram.mm
        r = self.ring
        with self.lock:
            cons, prod = struct.unpack_from("<II", mm, r + OUT_CONS)
            n = (prod - cons) & 0xFFFFFFFF
            if n == 0 or n > OUT_SIZE:
                return
            data = bytes(mm[r + OUT_OFF + ((cons + i) & (OUT_SIZE - 1))] for i in range(n))
            struct.pack_into("<I", mm, r + OUT_CONS, prod)
            text = self.partial + data.decode("latin-1").replace("\r", "")
            *done, self.partial = text.split("\n")
        self.dom.pv.evtchn.set_pending(self.port)
        for line in done:
            self.lines.append(line)
            for fn in list(self.listeners):
                try:
                    fn(line + "\n")
                except Exception:
                    self.listeners.remove(fn)

    def close(self) -> None:
        self.on_close.closed = True
        for fn in list(self.on_close):
            try:
                fn()
            except Exception:
                pass
