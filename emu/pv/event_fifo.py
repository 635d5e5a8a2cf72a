"""The FIFO event channel ABI (common/event_fifo.c): EVTCHNOP_init_control, expand_array,
set_priority, and the FIFO port operations a domain switches to once its first control block
is mapped.

Guest memory (public/event_channel.h:332-360): per vCPU a control block {u32 ready; u32 rsvd;
u32 head[16]} at `offset` in a page; the event array, pages of 1024 event words, each word
PENDING(31) MASKED(30) LINKED(29) BUSY(28) and a 17-bit LINK to the next port in its queue.
Xen keeps per queue (vCPU, priority) only the tail port. Setting a port pending
(evtchn_fifo_set_pending, event_fifo.c:161-319): PENDING; if unmasked and not yet LINKED,
link it behind the queue's tail (or make it the head when the tail was consumed), then set the
queue's READY bit and, if that bit was clear, mark the vCPU's upcall pending.

Pages are mapped as map_guest_page() does (event_fifo.c:423-444): a PV gfn is the frame,
held with a general and a PGT_writable_page type reference until the domain dies
(evtchn_fifo_destroy()).
"""

from __future__ import annotations

import struct

from emu.pv.mm import EINVAL, PGT_writable_page

PENDING, MASKED, LINKED, BUSY = 1 << 31, 1 << 30, 1 << 29, 1 << 28
LINK_BITS = 17
LINK_MASK = (1 << LINK_BITS) - 1
PRIORITY_DEFAULT, PRIORITY_MIN = 7, 15
CONTROL_BLOCK_SIZE = 8 + 4 * (PRIORITY_MIN + 1)  # sizeof(evtchn_fifo_control_block_t)
WORDS_PER_PAGE = 4096 // 4
MAX_ARRAY_PAGES = (1 << LINK_BITS) // WORDS_PER_PAGE
ENOENT, ENOSPC = 2, 28


class FifoDomain:
    """`d->evtchn_fifo` plus the vCPUs' `evtchn_fifo` (control blocks and queue tails)."""

    def __init__(self, ev) -> None:
        self.ev = ev
        self.array: list[int] = []  # MFNs of the event array pages
        self.control: dict[int, int] = {}  # vcpu id -> machine address of its control block
        self.tail: dict[tuple[int, int], int] = {}  # (vcpu id, priority) -> tail port
        self.lastq: dict[int, tuple[int, int]] = {}  # port -> (vcpu id, priority) last used
        self.held: list[int] = []  # frames mapped (control blocks and array pages)

    # ---- words ------------------------------------------------------------------------------

    def word_at(self, port: int) -> int | None:
        """evtchn_fifo_word_from_port(): the machine address of `port`'s event word."""
        if port >= len(self.array) * WORDS_PER_PAGE:
            return None
        return (self.array[port // WORDS_PER_PAGE] << 12) + 4 * (port % WORDS_PER_PAGE)

    def _rd(self, ma: int) -> int:
        return struct.unpack_from("<I", self.ev.machine.ram.mm, ma)[0]

    def _wr(self, ma: int, value: int) -> None:
        struct.pack_into("<I", self.ev.machine.ram.mm, ma, value & 0xFFFFFFFF)

    # ---- port operations (evtchn_port_ops_fifo) --------------------------------------------

    def set_pending(self, port: int) -> bool:
        """evtchn_fifo_set_pending(); True if the port was newly pending (check pollers)."""
        ch = self.ev.ports.get(port)
        word = self.word_at(port)
        if word is None:
            if ch is not None:
                ch.fifo_pending = True  # raised when its array page arrives
            return False
        vid = ch.vcpu if ch is not None else 0
        prio = ch.priority if ch is not None else PRIORITY_DEFAULT
        cb = self.control.get(vid)
        if cb is None:  # "has no FIFO event channel control block": the event is dropped
            return False
        w = self._rd(word)
        newly = not w & PENDING
        w |= PENDING
        linked = True
        if not w & MASKED and not w & LINKED:
            self._wr(word, w | LINKED)
            old = self.lastq.get(port, (vid, prio))
            if self.tail.get(old) == port:
                self.tail[old] = 0  # its old queue is empty now
            self.lastq[port] = (vid, prio)
            tail = self.tail.get((vid, prio), 0)
            linked = bool(tail) and self._set_link(tail, port)
            if not linked:
                self._wr(cb + 8 + 4 * prio, port)  # the queue's head
            self.tail[(vid, prio)] = port
        else:
            self._wr(word, w)
        if not linked:
            ready = self._rd(cb)
            if not ready & (1 << prio):
                self._wr(cb, ready | (1 << prio))
                self.ev.mark_events_pending(vid)
        return newly

    def _set_link(self, tail: int, port: int) -> bool:
        """evtchn_fifo_set_link(): link the tail word to `port` iff it is still LINKED
        (the guest unlinks words as it consumes them; no other CPU races this one)."""
        ma = self.word_at(tail)
        if ma is None:
            return False
        w = self._rd(ma)
        if not w & LINKED:
            return False
        self._wr(ma, (w & ~(BUSY | LINK_MASK)) | port)
        return True

    def clear_pending(self, port: int) -> None:
        word = self.word_at(port)
        if word is not None:
            self._wr(word, self._rd(word) & ~PENDING)

    def unmask(self, port: int) -> None:
        """evtchn_fifo_unmask(): clear MASKED, relink if pending."""
        word = self.word_at(port)
        if word is None:
            return
        w = self._rd(word) & ~MASKED
        self._wr(word, w)
        if w & PENDING:
            self.set_pending(port)

    def is_pending(self, port: int) -> bool:
        word = self.word_at(port)
        return word is not None and bool(self._rd(word) & PENDING)

    # ---- mapping guest pages ---------------------------------------------------------------

    def map_page(self, gfn: int) -> int | None:
        """map_guest_page(): the frame with a general and a writable type reference."""
        dom = self.ev.dom
        pvmm = self.ev.machine.pv.mm
        if not 0 <= gfn < self.ev.machine.ram.nr_frames or not pvmm.get_page(gfn, dom):
            return None
        if pvmm.get_page_type(gfn, PGT_writable_page, dom):
            pvmm.put_page(gfn)
            return None
        self.held.append(gfn)
        return gfn

    def destroy(self) -> None:
        """evtchn_fifo_destroy(): every mapped page let go."""
        pvmm = self.ev.machine.pv.mm
        for mfn in self.held:
            pvmm.put_page_and_type(mfn, self.ev.dom)
        self.held.clear()
        self.control.clear()
        self.array.clear()


def init_control(ev, vcpu_id: int, gfn: int, offset: int) -> int:
    """evtchn_fifo_init_control() (event_fifo.c:572-649): 0 or -ENOENT/-EINVAL."""
    dom = ev.dom
    if not 0 <= vcpu_id < len(dom.vcpus):  # domain_vcpu()
        return -ENOENT
    if offset > 4096 - CONTROL_BLOCK_SIZE or offset & 7:
        return -EINVAL
    first = ev.fifo is None
    fifo = ev.fifo if not first else FifoDomain(ev)
    if vcpu_id in fifo.control:  # map_control_block(): already mapped
        return -EINVAL
    mfn = fifo.map_page(gfn)
    if mfn is None:
        if first:
            fifo.destroy()  # the error path: evtchn_fifo_destroy()
        return -EINVAL
    fifo.control[vcpu_id] = (mfn << 12) + offset
    if first:
        # setup_ports(): bound ports keep their 2-level pending state, at default priority.
        for port, ch in ev.ports.items():
            if port and port < ev.max_port + 1:
                ch.priority = PRIORITY_DEFAULT
                ch.fifo_pending = ev.pending_2l(port)
        ev.fifo = fifo
    return 0


def expand_array(ev, gfn: int) -> int:
    """evtchn_fifo_expand_array() / add_page_to_event_array() (event_fifo.c:651-703)."""
    fifo = ev.fifo
    if fifo is None:
        return -95  # -EOPNOTSUPP
    if len(fifo.array) >= MAX_ARRAY_PAGES:
        return -ENOSPC
    if fifo.map_page(gfn) is None:
        return -EINVAL
    first = len(fifo.array) * WORDS_PER_PAGE
    fifo.array.append(gfn)
    for port in range(first, first + WORDS_PER_PAGE):  # events raised while it was missing
        ch = ev.ports.get(port)
        if ch is not None and ch.fifo_pending:
            ch.fifo_pending = False
            ev.set_pending(port)
    return 0


def set_priority(ev, port: int, priority: int) -> int:
    """evtchn_set_priority() (event_channel.c:1337-1352) with evtchn_fifo_set_priority()."""
    ch = ev.ports.get(port)
    if ch is None or port == 0:
        return -EINVAL
    if ev.fifo is None:
        return -38  # -ENOSYS: the 2-level ABI has no priorities
    if priority > PRIORITY_MIN:
        return -EINVAL
    ch.priority = priority
    return 0
