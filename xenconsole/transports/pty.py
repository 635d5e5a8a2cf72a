"""A PTY (`--pty [LINK]`; clients open its path): QEMU's char-pty design.

The PTY is raw and the server keeps no slave fd open: while no client has the slave open the
master reports HUP, we stop reading and drop output; a probe notices when a client opens it
again. picocom, screen, miniterm and pyserial can come and go as often as they like.
"""

from __future__ import annotations

import errno
import os
import select
import tty

import serial
from twisted.internet import abstract, fdesc, task

from xenconsole.clientlink import LinkError, SerialLink
from xenconsole.hub import Hub, Listener
from xenconsole.outbuf import OutputBuffer

PROBE_INTERVAL = 0.1


class PtyClient(abstract.FileDescriptor):
    name = "pty"

    def __init__(self, hub, reactor, link: str | None = None, buffer_limit: int = 256 * 1024):
        abstract.FileDescriptor.__init__(self, reactor)
        self.hub = hub
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        fdesc.setNonBlocking(self.master)
        self.link = link
        if link:
            try:
                if stale_pty_link(link):
                    os.unlink(link)
                os.symlink(self.path, link)
            except OSError as e:
                os.close(self.master)
                why = e.strerror
                if e.errno == errno.EEXIST and os.path.islink(link):
                    why = f"File exists (a link to {os.readlink(link)}, not a stale PTY link)"
                raise OSError(e.errno, f"cannot create PTY link {link}: {why}") from None
        self.connected = 1
        self.attached = False
        self.dropped_while_detached = 0
        self.out = OutputBuffer(self._write_attached, buffer_limit, self._flush)
        self.registerProducer(self.out, True)
        self._probe = task.LoopingCall(self._check_attached)
        self._probe.clock = reactor
        self._probe.start(PROBE_INTERVAL, now=True)

    def fileno(self) -> int:
        return self.master

    def _hup(self) -> bool:
        p = select.poll()
        p.register(self.master, select.POLLIN | select.POLLHUP)
        for _fd, ev in p.poll(0):
            if ev & select.POLLHUP:
                return True
        return False

    def _check_attached(self) -> None:
        if self.master < 0:
            return
        if self._hup():
            if self.attached:
                self._detach()
        elif not self.attached:
            self.attached = True
            self.connected = 1
            self.disconnected = 0
            self.startReading()
            self.hub.attach(self)

    def _detach(self) -> None:
        self.attached = False
        self.stopReading()
        self.stopWriting()
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.offset = 0
        # Not paused any more: nothing will call resumeProducing for a buffer we just threw
        # away, and the next client would otherwise get nothing at all.
        self.producerPaused = False
        self.out.reset()
        self.hub.detach(self)

    def deliver(self, data: bytes) -> None:
        if self.attached:
            self.out.deliver(data)
        else:
            self.dropped_while_detached += len(data)

    def _write_attached(self, data: bytes) -> None:
        if self.attached:
            self.write(data)

    def _flush(self) -> None:
        if self.attached:
            self.doWrite()

    def doRead(self):
        return fdesc.readFromFD(self.master, lambda data: self.hub.receive(data, self))

    def writeSomeData(self, data: bytes):
        try:
            return fdesc.writeToFD(self.master, data)
        except OSError as e:
            if e.errno == errno.EIO:
                return 0
            raise

    def connectionLost(self, reason=None) -> None:
        # A HUP means "nobody has the slave open", not "gone for good".
        if self.master >= 0 and self.attached:
            self._detach()
        self.connected = 1
        self.disconnected = 0

    def close(self) -> None:
        if self._probe.running:
            self._probe.stop()
        if self.attached:
            self._detach()
        if self.master >= 0:
            self.stopReading()
            self.stopWriting()
            os.close(self.master)
            self.master = -1
        if self.link:
            try:
                if os.path.islink(self.link) and os.readlink(self.link) == self.path:
                    os.unlink(self.link)
            except OSError:
                pass


def stale_pty_link(link: str) -> bool:
    """A link an earlier server left behind: a symlink to a PTY slave (/dev/pts/N) that no
    longer exists. Only that is replaced; a live PTY's link (another server's, or a
    terminal's), a link anywhere else and a real file are refused."""
    if not os.path.islink(link):
        return False
    target = os.readlink(link)
    return target.startswith("/dev/pts/") and not os.path.exists(target)


def parse_link(text: str, kind: str) -> str | None:
    """`--pty` alone: no link; `--pty LINK`: a symlink to the PTY at LINK."""
    return text or None


def listen(reactor, hub: Hub, link: str | None) -> Listener:
    pty = PtyClient(hub, reactor, link=link)
    return Listener(pty.path, pty.close)


class DeviceLink(SerialLink):
    """A device path, through pyserial: this PTY, or any serial port."""

    scheme = "a PTY"  # a BREAK cannot travel over one: tcsendbreak on a PTY is lost

    def _open(self, url: str) -> serial.SerialBase:
        if not os.path.exists(url):
            raise LinkError(f"{url}: no such device")
        return serial.Serial(url, baudrate=115200, timeout=0.1)
