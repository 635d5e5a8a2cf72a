"""dom0's xenstored: the XenStore tree and each guest's ring connection (PV and HVM).

The tree holds the keys libxl writes when it builds a domain (libxl_dom.c:461-490 and the
console keys of libxl__build_post): `domid`, `name`, `memory/static-max`, `memory/target`,
`store/port`, `store/ring-ref`, `console/port`, `console/ring-ref`, `cpu/N/availability`.
When a domain is introduced, xenstored binds its store port (interdomain) and serves the
ring page (`struct xenstore_domain_interface`, public/io/xs_wire.h) whenever the guest
notifies it: every complete request in `req[]` is answered in `rsp[]`, then the port is set
pending in the guest's shared_info.

Requests (tools/xenstored/core.c): READ, WRITE, MKDIR, RM, DIRECTORY, GET_PERMS, SET_PERMS,
WATCH (fires once at once, then on every change below the path), UNWATCH,
TRANSACTION_START/END (requests are served one at a time, so a transaction always ends
with OK), GET_DOMAIN_PATH. A reply echoes req_id and tx_id. Errors are `ERROR` with the
errno's name. A domU reaches only its own /local/domain/<id> subtree (else EACCES);
relative paths are under it.
"""

from __future__ import annotations

import struct
import threading

XS_DIRECTORY, XS_READ, XS_GET_PERMS, XS_WATCH, XS_UNWATCH = 1, 2, 3, 4, 5
XS_TRANSACTION_START, XS_TRANSACTION_END, XS_GET_DOMAIN_PATH = 6, 7, 10
XS_WRITE, XS_MKDIR, XS_RM, XS_SET_PERMS, XS_WATCH_EVENT, XS_ERROR = 11, 12, 13, 14, 15, 16
RING = 1024
REQ_OFF, RSP_OFF, REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD = 0, 1024, 2048, 2052, 2056, 2060
XENSTORE_PAYLOAD_MAX = 4096


class XsError(Exception):
    pass


class XenStore:
    """The tree (machine-wide) and the domains' connections."""

    def __init__(self) -> None:
        self.nodes: dict[str, str] = {"/": "", "/local": "", "/local/domain": ""}
        self.watches: list[tuple[Connection, str, str, bool]] = []  # conn, path, token, relative
        self.lock = threading.RLock()
        self.next_tx = 1

    # ---- the tree ---------------------------------------------------------------------------

    def write(self, path: str, value: str) -> None:
        with self.lock:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                self.nodes.setdefault("/" + "/".join(parts[:i]), "")
            self.nodes[path] = value
        self._fire(path)

    def read(self, path: str) -> str:
        with self.lock:
            if path not in self.nodes:
                raise XsError("ENOENT")
            return self.nodes[path]

    def directory(self, path: str) -> list[str]:
        with self.lock:
            if path not in self.nodes:
                raise XsError("ENOENT")
            pre = path.rstrip("/") + "/"
            # In creation order, as xenstored keeps a node's children.
            kids = dict.fromkeys(
                p[len(pre) :].split("/")[0] for p in self.nodes if p.startswith(pre)
            )
            kids.pop("", None)
            return list(kids)

    def rm(self, path: str) -> None:
        with self.lock:
            if path not in self.nodes:
                raise XsError("ENOENT")
            pre = path.rstrip("/") + "/"
            for p in [p for p in self.nodes if p == path or p.startswith(pre)]:
                del self.nodes[p]
        self._fire(path)

    def _fire(self, path: str) -> None:
        for conn, wpath, token, relative in list(self.watches):
            if path == wpath or path.startswith(wpath.rstrip("/") + "/"):
                conn.watch_event(path, token, relative)

    def introduce(self, machine, dom, ring_mfn: int, port: int, entries: dict[str, str]):
        """XS_INTRODUCE from the toolstack: the keys, then the connection to the ring."""
        base = f"/local/domain/{dom.domid}"
        for k, v in entries.items():
            self.write(f"{base}/{k}", v)
        return Connection(self, machine, dom, ring_mfn, port)

    def release(self, domid: int) -> None:
        with self.lock:
            self.watches = [w for w in self.watches if w[0].domid != domid]
        try:
            self.rm(f"/local/domain/{domid}")
        except XsError:
            pass


class Connection:
    """One domain's ring (xenstored's struct connection for a domain)."""

    def __init__(self, xs: XenStore, machine, dom, ring_mfn: int, port: int) -> None:
        self.xs = xs
        self.machine = machine
        self.dom = dom
        self.domid = dom.domid
        self.ring = ring_mfn << 12
        self.port = port
        self.out = bytearray()  # replies not yet in rsp[]
        self.deferred: list[tuple[str, str, bool]] = []  # a new watch's first event
        self.lock = threading.RLock()
        self.evtchn = None  # the domain's event channels (PV or HVM), once connected

    def connect(self, evtchn) -> None:
        from emu.pv.event import ECS_INTERDOMAIN

        self.evtchn = evtchn
        ch = evtchn.ports[self.port]
        ch.state, ch.remote_dom, ch.remote_port = ECS_INTERDOMAIN, 0, self.port
        ch.consumer = self.process

    def path(self, p: str) -> str:
        home = f"/local/domain/{self.domid}"
        full = p if p.startswith("/") else f"{home}/{p}"
        full = full.rstrip("/") or "/"
        if full != home and not full.startswith(home + "/"):
            raise XsError("EACCES")
        return full

    # ---- the ring ------------------------------------------------------------------------------

    def process(self) -> None:
        mm = self.machine.ram.mm
        r = self.ring
        with self.lock:
            while True:
                cons, prod = struct.unpack_from("<II", mm, r + REQ_CONS)
                avail = (prod - cons) & 0xFFFFFFFF
                if avail < 16 or avail > RING:
                    break
                hdr = bytes(mm[r + REQ_OFF + ((cons + i) & (RING - 1))] for i in range(16))
                mtype, req_id, tx_id, length = struct.unpack("<IIII", hdr)
                if length > XENSTORE_PAYLOAD_MAX or avail < 16 + length:
                    break
                body = bytes(
                    mm[r + REQ_OFF + ((cons + 16 + i) & (RING - 1))] for i in range(length)
                )
                struct.pack_into("<I", mm, r + REQ_CONS, (cons + 16 + length) & 0xFFFFFFFF)
                rtype, payload = self.handle(mtype, tx_id, body)
                self.out += struct.pack("<IIII", rtype, req_id, tx_id, len(payload)) + payload
                for ev in self.deferred:  # the reply first, then the watch's first event
                    self.watch_event(*ev)
                self.deferred.clear()
            self._flush()

    def _flush(self) -> None:
        mm = self.machine.ram.mm
        r = self.ring
        cons, prod = struct.unpack_from("<II", mm, r + RSP_CONS)
        room = RING - ((prod - cons) & 0xFFFFFFFF)
        n = min(room, len(self.out))
        for i in range(n):
            mm[r + RSP_OFF + ((prod + i) & (RING - 1))] = self.out[i]
        if n:
            del self.out[:n]
            struct.pack_into("<I", mm, r + RSP_PROD, (prod + n) & 0xFFFFFFFF)
            self.evtchn.set_pending(self.port)

    def watch_event(self, path: str, token: str, relative: bool) -> None:
        home = f"/local/domain/{self.domid}/"
        if relative and path.startswith(home):  # a relative watch gets relative paths
            path = path[len(home) :]
        payload = path.encode() + b"\0" + token.encode() + b"\0"
        with self.lock:
            self.out += struct.pack("<IIII", XS_WATCH_EVENT, 0, 0, len(payload)) + payload
            if self.dom.domid in self.machine.domains and self.evtchn is not None:
                self._flush()

    # ---- requests --------------------------------------------------------------------------------

    def handle(self, mtype: int, tx_id: int, body: bytes) -> tuple[int, bytes]:
        try:
            args = body.split(b"\0")
            if body.endswith(b"\0"):
                args = args[:-1]
            words = [a.decode("latin-1") for a in args]
            return mtype, self._op(mtype, words, body)
        except XsError as e:
            return XS_ERROR, str(e).encode() + b"\0"

    def _one(self, words: list[str], body: bytes) -> str:
        if len(words) != 1 or not body.endswith(b"\0"):
            raise XsError("EINVAL")
        return words[0]

    def _op(self, mtype: int, words: list[str], body: bytes) -> bytes:
        xs = self.xs
        if mtype == XS_READ:
            return xs.read(self.path(self._one(words, body))).encode("latin-1")
        if mtype == XS_WRITE:
            name, _, value = body.partition(b"\0")
            if not _:
                raise XsError("EINVAL")
            xs.write(self.path(name.decode("latin-1")), value.decode("latin-1"))
            return b"OK\0"
        if mtype == XS_MKDIR:
            p = self.path(self._one(words, body))
            if p not in xs.nodes:
                xs.write(p, "")
            return b"OK\0"
        if mtype == XS_RM:
            xs.rm(self.path(self._one(words, body)))
            return b"OK\0"
        if mtype == XS_DIRECTORY:
            return b"".join(
                n.encode() + b"\0" for n in xs.directory(self.path(self._one(words, body)))
            )
        if mtype == XS_GET_PERMS:
            xs.read(self.path(self._one(words, body)))
            return f"n{self.domid}\0".encode()
        if mtype == XS_SET_PERMS:
            if not words:
                raise XsError("EINVAL")
            xs.read(self.path(words[0]))
            return b"OK\0"
        if mtype == XS_WATCH:
            if len(words) != 2:
                raise XsError("EINVAL")
            full = self.path(words[0])
            relative = not words[0].startswith("/")
            with xs.lock:
                xs.watches.append((self, full, words[1], relative))
            self.deferred.append((full, words[1], relative))
            return b"OK\0"
        if mtype == XS_UNWATCH:
            if len(words) != 2:
                raise XsError("EINVAL")
            full = self.path(words[0])
            with xs.lock:
                before = len(xs.watches)
                xs.watches = [
                    w for w in xs.watches if not (w[0] is self and w[1:3] == (full, words[1]))
                ]
                if len(xs.watches) == before:
                    raise XsError("ENOENT")
            return b"OK\0"
        if mtype == XS_TRANSACTION_START:
            with xs.lock:
                tx, xs.next_tx = xs.next_tx, xs.next_tx + 1
            return f"{tx}\0".encode()
        if mtype == XS_TRANSACTION_END:
            if self._one(words, body) not in ("T", "F"):
                raise XsError("EINVAL")
            return b"OK\0"
        if mtype == XS_GET_DOMAIN_PATH:
            domid = self._one(words, body)
            if not domid.isdigit():
                raise XsError("EINVAL")
            return f"/local/domain/{int(domid)}\0".encode()
        raise XsError("EINVAL")
