"""The client side of a transport: the byte connection behind `xenconsole connect` and
`xenconsole.expect`.

Each transport module (xenconsole/transports/) defines its `Link` subclass; the table there
picks one by URL scheme (`xenconsole.transports.open_link`). Each link runs one reader thread
that hands received console bytes to `on_data` (and `None` once the connection is gone);
`write`, `send_break` and `set_size` are called from the UI. A plain thread keeps the client
independent of any event loop: blocking reads on a socket or a pyserial port, and the UI loop
is woken once per received chunk.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import serial

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

    def send_who(self) -> None:
        """Ask the server who is attached (the answer arrives as console output)."""
        raise LinkError(f"who needs a telnet connection, not {self.scheme}")

    def set_size(self, cols: int, rows: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def hostport(url: str) -> tuple[str, int]:
    """`SCHEME://HOST:PORT` -> (host, port); LinkUsageError otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise LinkUsageError(f"{url}: expected {parts.scheme}://HOST:PORT")
    return parts.hostname, port


class SerialLink(Link):
    """A pyserial port: subclasses open it in `_open` (RFC 2217, a device path)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            self.port = self._open(url)
        except (serial.SerialException, OSError, ValueError) as e:
            raise LinkError(f"cannot open {url}: {e}") from None

    def _open(self, url: str) -> serial.SerialBase:
        raise NotImplementedError

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
        if not self.can_break:
            super().send_break()
        self.port.send_break(0.25)

    def close(self) -> None:
        super().close()
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass


class PullLink:
    """Reads with a timeout over a link, which pushes from its reader thread (for
    `xenconsole.expect`, which pexpect drives by pulling)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._eof = False
        link.start(self._q.put)

    def fileno(self) -> int:
        return -1

    def recv(self, size: int, timeout: float | None) -> bytes | None:
        """Up to about `size` bytes; None on timeout, b'' at end of file."""
        if self._eof:
            return b""
        try:
            if timeout is not None and timeout <= 0:
                data = self._q.get_nowait()
            else:
                data = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        chunks, n = [], 0
        while data is not None:
            chunks.append(data)
            n += len(data)
            if n >= size:
                break
            try:
                data = self._q.get_nowait()
            except queue.Empty:
                break
        if data is None:
            self._eof = True
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        self.link.write(data)

    def send_break(self) -> None:
        self.link.send_break()

    def close(self) -> None:
        self.link.close()
