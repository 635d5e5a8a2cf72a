"""`xenconsole connect`'s application in-process: prompt_toolkit's pipe input types the keys,
a real VT100 output draws into the client's own screen model (xenconsole/vt.py) so the
status bar and the menu are read back as a terminal shows them, and the link is a real
`socket://` connection to a scripted host on 127.0.0.1. The same client through a PTY is
tests/e2e/test_connect.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from xenconsole.connect import ClientSession
from xenconsole.transports import open_link
from xenconsole.vt import Screen

pytestmark = pytest.mark.timeout(60)

TO_XEN = b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"
TO_DOM0 = b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"
PROMPT = b"root@dom0:~# "
COLS, ROWS = 80, 24


class Drawn:
    """The terminal the application draws on: a text stream for prompt_toolkit's
    Vt100_Output whose bytes go into a screen model."""

    encoding = "utf-8"

    def __init__(self, cols: int, rows: int) -> None:
        self.screen = Screen(cols, rows)
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.screen.feed_bytes(text.encode("utf-8"))
        return len(text)

    def flush(self) -> None:
        pass

    def status(self) -> str:
        with self.lock:
            return self.screen.display()[-1]

    def text(self) -> str:
        with self.lock:
            return self.screen.text()


class Client:
    """The running application, the keyboard (pipe input) and the host's end of the link."""

    def __init__(self, session: ClientSession, keys: PipeInput, host: socket.socket) -> None:
        self.session = session
        self.keys = keys
        self.host = host
        self.drawn: Drawn = session.app.output.stdout
        self.url = session.link.url
        self.rc: list[int] = []
        self.thread = threading.Thread(target=lambda: self.rc.append(session.run()))

    def wait(self, pred, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never seen:\n{self.drawn.text()}")
            time.sleep(0.01)

    def wait_status(self, start: str) -> None:
        self.wait(lambda: self.drawn.status().startswith(start), f"status {start!r}")

    def wait_text(self, text: str) -> None:
        self.wait(lambda: text in self.drawn.text(), repr(text))

    def wait_gone(self, text: str) -> None:
        self.wait(lambda: text not in self.drawn.text(), f"the end of {text!r}")

    def received(self, n: int) -> bytes:
        """Exactly the next n bytes the client sent to the host."""
        buf = b""
        while len(buf) < n:
            chunk = self.host.recv(n - len(buf))
            assert chunk, f"link closed after {buf!r}"
            buf += chunk
        return buf

    def nothing_more_sent(self) -> None:
        """A marker key goes through: whatever was typed before it sent nothing."""
        self.keys.send_text("@")
        assert self.received(1) == b"@"

    def finish(self) -> int:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.rc[0]


@contextmanager
def running_client() -> Iterator[Client]:
    srv = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{srv.getsockname()[1]}"
    with create_pipe_input() as keys:
        out = Vt100_Output(
            Drawn(COLS, ROWS), lambda: Size(rows=ROWS, columns=COLS), term="xterm", enable_cpr=False
        )
        with create_app_session(input=keys, output=out):
            session = ClientSession(open_link(url))
        host, _ = srv.accept()
        host.settimeout(10)
        client = Client(session, keys, host)
        client.thread.start()
        try:
            yield client
        finally:
            if client.thread.is_alive() and session.loop is not None:
                session.loop.call_soon_threadsafe(session.quit)
            client.thread.join(10)
            host.close()
            srv.close()


def test_keys_go_to_the_host_and_the_status_follows_switch_messages() -> None:
    with running_client() as c:
        c.wait_status(f" input: ?  | Ctrl-A x3 switches | Ctrl-] menu | {c.url}")
        c.host.sendall(PROMPT[:5])
        c.host.sendall(PROMPT[5:] + TO_DOM0)
        c.wait_status(f" input: DOM0  | Ctrl-A x3 switches | Ctrl-] menu | {c.url}")
        c.wait_text("root@dom0:~# (XEN) *** Serial input to DOM0")
        c.keys.send_text("xl list\r")
        assert c.received(8) == b"xl list\r"
        c.keys.send_text("\x1b[A\x03é\t")  # an arrow key, Ctrl-C, UTF-8, Tab: all raw
        assert c.received(7) == b"\x1b[A\x03\xc3\xa9\t"
        c.keys.send_text("\x01\x01\x01")
        assert c.received(3) == b"\x01\x01\x01"
        c.host.sendall(TO_XEN[:30])  # a message split across reads still counts once
        c.host.sendall(TO_XEN[30:])
        c.wait_status(" input: Xen  |")
        assert (c.session.target, c.session.switches) == ("Xen", 2)
        c.host.sendall(b"(XEN) 'h' pressed -> showing installed handlers\r\n")
        c.wait_text("(XEN) 'h' pressed -> showing installed handlers")
        assert c.drawn.status().startswith(" input: Xen  |")
        c.host.sendall(TO_DOM0)
        c.wait_status(" input: DOM0  |")


def test_the_menu_acts_and_swallows_other_keys() -> None:
    with running_client() as c:
        c.host.sendall(PROMPT + TO_DOM0)
        c.wait_status(" input: DOM0  |")
        c.keys.send_text("\x1d")
        c.wait_text("xenconsole menu")
        c.keys.send_text("x")  # not a menu key: closes the menu, sends nothing
        c.wait_gone("xenconsole menu")
        c.nothing_more_sent()
        c.keys.send_text("\x1ds")  # switch input: Ctrl-A x3
        assert c.received(3) == b"\x01\x01\x01"
        c.host.sendall(TO_XEN)
        c.wait_status(" input: Xen  |")
        c.keys.send_text("\x1dk")  # in Xen, listing the keys is one `h`
        assert c.received(1) == b"h"
        c.keys.send_text("\x1d\x1d")  # a literal Ctrl-] for the host
        assert c.received(1) == b"\x1d"
        c.keys.send_text("\x1db")  # a raw TCP link carries no BREAK: the status says so
        c.wait_status(" input: Xen  | a BREAK cannot travel over socket://  | Ctrl-A x3")
        c.nothing_more_sent()  # the next keystroke clears the notice
        c.wait_status(" input: Xen  | Ctrl-A x3 switches")
        c.keys.send_text("\x1d")
        c.wait_text("xenconsole menu")
        c.keys.send_text("\x1b")  # Esc: back to the console
        c.wait_gone("xenconsole menu")
        c.nothing_more_sent()
        c.host.sendall(TO_DOM0)
        c.wait_status(" input: DOM0  |")
        c.keys.send_text("\x1dk")  # from dom0: switch, h, switch back
        assert c.received(7) == b"\x01\x01\x01h\x01\x01\x01"
        c.keys.send_text("\x1dq")
        assert c.finish() == 0
        assert not c.session.closed_by_host


def test_listing_keys_from_an_unknown_target_switches_once_and_back() -> None:
    with running_client() as c:
        c.wait_status(" input: ?  |")
        c.keys.send_text("\x1dk")
        assert c.received(3) == b"\x01\x01\x01"
        c.host.sendall(TO_XEN)  # it was dom0: press h in Xen, then go back
        assert c.received(4) == b"h\x01\x01\x01"
        c.host.sendall(TO_DOM0)
        c.wait_status(" input: DOM0  |")


def test_the_host_going_away_ends_the_client_with_1() -> None:
    with running_client() as c:
        c.host.sendall(PROMPT)
        c.wait_text("root@dom0:~#")
        c.host.close()
        assert c.finish() == 1
        assert c.session.closed_by_host
