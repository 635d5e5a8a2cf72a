"""The byte connection behind `xenconsole connect`: telnet, raw TCP, RFC 2217 or a PTY.

Each link runs one reader thread that hands received console bytes to `on_data` (and `None`
once the connection is gone); `write`, `send_break` and `set_size` are called from the UI.
A plain thread keeps the client independent of any event loop: blocking reads on a socket
or a pyserial port, and the UI loop is woken once per received chunk.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import serial

from xenconsole.telnet_codec import (
    BINARY,
    DO,
    DONT,
    ECHO,
    IAC,
    NAWS,
    SB,
    SE,
    SGA,
    WILL,
    WONT,
)

OnData = Callable[[bytes | None], None]


class LinkError(Exception):
    """The console cannot be reached; the message is one line."""


class LinkUsageError(LinkError):
    """The URL itself is wrong."""


class Link:
    scheme = ""
    can_break = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.on_data: OnData = lambda data: None
        self.closed = False
        self._thread: threading.Thread | None = None

    def start(self, on_data: OnData) -> None:
        self.on_data = on_data
        self._thread = threading.Thread(target=self._reader, name="xenconsole-link", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        try:
            while not self.closed:
                data = self._read()
                if data is None:
                    break
                if data:
                    self.on_data(data)
        except (OSError, serial.SerialException):
            pass
        except (TypeError, AttributeError):
            if not self.closed:  # pyserial after close() in another thread; a real bug else
                raise
        finally:
            if not self.closed:
                self.on_data(None)

    def _read(self) -> bytes | None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def send_break(self) -> None:
        raise LinkError(f"a BREAK cannot travel over {self.scheme}")

    def set_size(self, cols: int, rows: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise LinkUsageError(f"{url}: expected {parts.scheme}://HOST:PORT")
    return parts.hostname, port


class SocketLink(Link):
    """`socket://HOST:PORT`: raw TCP, bytes both ways."""

    scheme = "socket://"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        host, port = _hostport(url)
        try:
            self.sock = socket.create_connection((host, port), timeout=10)
        except OSError as e:
            raise LinkError(f"cannot connect to {url}: {e.strerror or e}") from None
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wlock = threading.Lock()

    def _read(self) -> bytes | None:
        data = self.sock.recv(65536)
        return data or None

    def _send(self, data: bytes) -> None:
        with self._wlock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader notices the end and reports it once

    def write(self, data: bytes) -> None:
        self._send(data)

    def close(self) -> None:
        super().close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class TelnetLink(SocketLink):
    """`telnet://HOST:PORT`: a character-mode telnet client with NAWS and BREAK."""

    scheme = "telnet://"
    can_break = True
    BRK = 243
    ACCEPT_WILL = frozenset({ECHO, SGA, BINARY})  # what we let the server do
    ACCEPT_DO = frozenset({NAWS, SGA, BINARY})  # what we do when asked
    SB_MAX = 512

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.size: tuple[int, int] | None = None
        self.naws = False
        self.him: dict[int, bool] = {}
        self.us: dict[int, bool] = {}
        self._state = 0  # 0 data, 1 IAC, 2 option, 3 SB, 4 SB IAC
        self._cmd = 0
        self._sb = bytearray()

    def _read(self) -> bytes | None:
        data = self.sock.recv(65536)
        if not data:
            return None
        return self._parse(data)

    def _parse(self, data: bytes) -> bytes:
        if self._state == 0 and IAC not in data:
            return data
        out = bytearray()
        for b in data:
            st = self._state
            if st == 0:
                if b == IAC:
                    self._state = 1
                else:
                    out.append(b)
            elif st == 1:
                if b == IAC:
                    out.append(IAC)
                    self._state = 0
                elif b in (DO, DONT, WILL, WONT):
                    self._cmd, self._state = b, 2
                elif b == SB:
                    self._sb.clear()
                    self._state = 3
                else:
                    self._state = 0  # NOP, GA, DM and the rest: nothing to do
            elif st == 2:
                self._negotiate(self._cmd, b)
                self._state = 0
            elif st == 3:
                if b == IAC:
                    self._state = 4
                elif len(self._sb) < self.SB_MAX:
                    self._sb.append(b)
            else:  # SB IAC
                if b == SE:
                    self._state = 0  # we need nothing the server could subnegotiate
                else:
                    if b == IAC and len(self._sb) < self.SB_MAX:
                        self._sb.append(b)
                    self._state = 3
        return bytes(out)

    def _negotiate(self, cmd: int, opt: int) -> None:
        # Answer only changes of state (RFC 854), so negotiation cannot loop.
        if cmd == WILL:
            ok = opt in self.ACCEPT_WILL
            if self.him.get(opt) != ok:
                self.him[opt] = ok
                self._send(bytes([IAC, DO if ok else DONT, opt]))
        elif cmd == WONT:
            if self.him.get(opt) is not False:
                self.him[opt] = False
                self._send(bytes([IAC, DONT, opt]))
        elif cmd == DO:
            ok = opt in self.ACCEPT_DO
            if self.us.get(opt) != ok:
                self.us[opt] = ok
                self._send(bytes([IAC, WILL if ok else WONT, opt]))
            if ok and opt == NAWS:
                self.naws = True
                self._send_naws()
        elif cmd == DONT:
            if self.us.get(opt) is not False:
                self.us[opt] = False
                self._send(bytes([IAC, WONT, opt]))
            if opt == NAWS:
                self.naws = False

    def _send_naws(self) -> None:
        if self.naws and self.size is not None:
            cols, rows = (min(max(v, 0), 0xFFFF) for v in self.size)
            body = bytes([cols >> 8, cols & 0xFF, rows >> 8, rows & 0xFF])
            self._send(
                bytes([IAC, SB, NAWS]) + body.replace(b"\xff", b"\xff\xff") + bytes([IAC, SE])
            )

    def write(self, data: bytes) -> None:
        # NVT: IAC doubled; a CR not followed by LF is sent as CR NUL unless in BINARY.
        data = data.replace(b"\xff", b"\xff\xff")
        if not self.us.get(BINARY):
            data = data.replace(b"\r", b"\r\x00").replace(b"\r\x00\n", b"\r\n")
        self._send(data)

    def send_break(self) -> None:
        self._send(bytes([IAC, self.BRK]))

    def set_size(self, cols: int, rows: int) -> None:
        if self.size != (cols, rows):
            self.size = (cols, rows)
            self._send_naws()


class SerialLink(Link):
    """`rfc2217://HOST:PORT` through pyserial, or a serial device / PTY path."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.is_rfc2217 = url.startswith("rfc2217://")
        self.scheme = "RFC 2217" if self.is_rfc2217 else "a PTY"
        self.can_break = self.is_rfc2217
        try:
            if self.is_rfc2217:
                _hostport(url)
                self.port = serial.serial_for_url(url, baudrate=115200, timeout=0.1)
            else:
                if not os.path.exists(url):
                    raise LinkError(f"{url}: no such device")
                self.port = serial.Serial(url, baudrate=115200, timeout=0.1)
        except (serial.SerialException, OSError, ValueError) as e:
            raise LinkError(f"cannot open {url}: {e}") from None

    def _read(self) -> bytes | None:
        if not self.port.is_open:
            return None
        return self.port.read(self.port.in_waiting or 1)

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (serial.SerialException, OSError):
            pass

    def send_break(self) -> None:
        if not self.is_rfc2217:
            # A PTY cannot carry a BREAK (reference/ecosystem.md §1.2): tcsendbreak is lost.
            super().send_break()
        self.port.send_break(0.25)

    def close(self) -> None:
        super().close()
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass


def open_link(url: str) -> Link:
    """A link for `telnet://`, `socket://`, `rfc2217://` or a device path."""
    if url.startswith("telnet://"):
        return TelnetLink(url)
    if url.startswith("socket://"):
        return SocketLink(url)
    if url.startswith("rfc2217://"):
        return SerialLink(url)
    if "://" in url:
        raise LinkUsageError(
            f"{url}: unknown scheme (use telnet://, socket://, rfc2217:// or a path)"
        )
    return SerialLink(url)
