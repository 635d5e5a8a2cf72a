"""`xenconsole connect URL`: an interactive terminal for the console (docs/contract.md).

A full-screen prompt_toolkit application: the console's screen (a VT100 model fed with the
received bytes) fills the terminal above a one-line status bar that shows where input goes,
tracked from Xen's `*** Serial input to ...` messages. Every keystroke is passed through
raw (Keys.Any and friends), except the local escape Ctrl-], which opens a menu: quit, send
BREAK, switch input (Ctrl-A x3), list debug keys, or send a literal Ctrl-] (which `xl
console` uses to return to dom0). The window size goes to the host (NAWS on telnet).

The connection is a plain reader thread (`xenconsole.clientlink`) that wakes the UI's
asyncio loop once per batch of received bytes.
"""

from __future__ import annotations

import asyncio
import sys
import threading

from prompt_toolkit.application import Application
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import (
    ConditionalContainer,
    Float,
    FloatContainer,
    HSplit,
    Layout,
    Window,
)
from prompt_toolkit.layout.controls import FormattedTextControl, UIContent, UIControl
from prompt_toolkit.styles import Style

from emu.console import SWITCH_KEYS, SWITCH_RE, SWITCH_TARGET_DOM0, SWITCH_TARGET_XEN
from xenconsole.clientlink import Link, LinkError, LinkUsageError
from xenconsole.transports import open_link
from xenconsole.vt import Screen

ESCAPE_KEY = Keys.ControlSquareClose
SWITCH_WAIT = 3.0

# Keys prompt_toolkit keeps for itself or that carry no bytes for the console.
_NOT_PASSED = {
    ESCAPE_KEY,
    Keys.CPRResponse,
    Keys.Vt100MouseEvent,
    Keys.WindowsMouseEvent,
    Keys.ScrollUp,
    Keys.ScrollDown,
    Keys.Ignore,
    Keys.SIGINT,
}
PASSTHROUGH_KEYS = [k for k in Keys if k not in _NOT_PASSED]

MENU_TEXT = """\
 xenconsole menu
   q    quit
   b    send BREAK
   s    switch input (Ctrl-A x3)
   k    list debug keys (h)
   w    who is attached (telnet)
   ^]   send a literal Ctrl-]
   Esc  back to the console
"""

STYLE = Style.from_dict(
    {
        "status": "reverse",
        "status.target": "reverse bold",
        "status.notice": "reverse italic",
        "menu": "bg:#303030 #ffffff",
    }
)


class ConsoleControl(UIControl):
    """The console screen, resized to whatever room the layout gives it."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    def create_content(self, width: int, height: int) -> UIContent:
        if (width, height) != self.session.size:
            self.session.resize(width, height)
        s = self.session.screen
        rows = ["".join(row) for row in s.lines]
        return UIContent(
            get_line=lambda i: [("", rows[i])],
            line_count=len(rows),
            cursor_position=Point(x=s.x, y=s.y),
            show_cursor=True,
        )

    def is_focusable(self) -> bool:
        return True


class ClientSession:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.screen = Screen(80, 23)
        self.size: tuple[int, int] | None = None  # the console area, once drawn
        self.target = "?"
        self.switches = 0
        self.notice = ""
        self.menu_open = False
        self.closed_by_host = False
        self._tail = b""
        self._pending: list[bytes | None] = []
        self._lock = threading.Lock()
        self._switch_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app = self._build_app()

    # ---- UI ------------------------------------------------------------------------------

    def _status(self):
        bar = [("class:status.target", f" input: {self.target} ")]
        if self.notice:  # before the help, so a narrow terminal still shows it
            bar.append(("class:status.notice", f" | {self.notice} "))
        bar.append(("class:status", f" | Ctrl-A x3 switches | Ctrl-] menu | {self.link.url} "))
        return bar

    def _build_app(self) -> Application:
        menu = Condition(lambda: self.menu_open)
        kb = KeyBindings()

        def passthrough(event) -> None:
            keys = event.key_sequence
            if any(kp.key == Keys.SIGINT for kp in keys):  # a real SIGINT (kill -INT)
                self.quit()
                return
            self.notice = ""  # a menu action's notice lasts until the next keystroke
            # Keys.Any also matches prompt_toolkit's own events (mouse, CPR): not for the host.
            data = "".join(kp.data for kp in keys if kp.key not in _NOT_PASSED)
            self.send(data.encode("utf-8"))

        for key in PASSTHROUGH_KEYS:
            kb.add(key, filter=~menu, eager=True)(passthrough)

        @kb.add(ESCAPE_KEY, filter=~menu, eager=True)
        def _open_menu(event) -> None:
            self.menu_open = True

        def menu_key(key, action):
            @kb.add(key, filter=menu, eager=True)
            def _run(event) -> None:
                self.menu_open = False
                action()

        menu_key("q", self.quit)
        menu_key("b", self.send_break)
        menu_key("s", self.switch_input)
        menu_key("k", self.list_keys)
        menu_key("w", self.who)
        menu_key(ESCAPE_KEY, lambda: self.send(b"\x1d"))
        menu_key(Keys.Escape, lambda: None)
        menu_key(Keys.Any, lambda: None)

        body = FloatContainer(
            content=Window(ConsoleControl(self), wrap_lines=False),
            floats=[
                Float(
                    ConditionalContainer(
                        Window(FormattedTextControl(MENU_TEXT), style="class:menu", width=40),
                        filter=menu,
                    )
                )
            ],
        )
        layout = Layout(
            HSplit(
                [body, Window(FormattedTextControl(self._status), height=1, style="class:status")]
            )
        )
        app = Application(
            layout=layout,
            key_bindings=kb,
            style=STYLE,
            full_screen=True,
            mouse_support=False,
            min_redraw_interval=None,  # batches come from the reader; a floor only adds lag
        )
        app.ttimeoutlen = 0.05  # a lone ESC goes out after 50 ms, not half a second
        app.timeoutlen = 0.05
        return app

    def resize(self, cols: int, rows: int) -> None:
        self.size = (cols, rows)
        self.screen.resize(cols, rows)
        self.link.set_size(cols, rows)

    # ---- actions -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if data:
            self.link.write(data)

    def quit(self) -> None:
        if self.app.is_running and not self.app.future.done():
            self.app.exit(result=0)

    def send_break(self) -> None:
        try:
            self.link.send_break()
        except LinkError as e:
            self.notice = str(e)
        else:
            self.notice = "BREAK sent"

    def who(self) -> None:
        """Ask the server who is attached: its answer shows on the console screen."""
        try:
            self.link.send_who()
        except LinkError as e:
            self.notice = str(e)
        else:
            self.notice = ""

    def switch_input(self) -> None:
        self.notice = ""
        self.send(SWITCH_KEYS)

    def list_keys(self) -> None:
        """Press `h` in Xen and come back to where input was."""
        self.notice = ""
        if self.target == SWITCH_TARGET_XEN:
            self.send(b"h")
        elif self.target == SWITCH_TARGET_DOM0:
            self.send(SWITCH_KEYS + b"h" + SWITCH_KEYS)
        else:  # unknown: switch once and see which way it went
            self.app.create_background_task(self._list_keys_unknown())

    async def _list_keys_unknown(self) -> None:
        seen = self.switches
        self.send(SWITCH_KEYS)
        event = self._switch_event
        try:
            while self.switches == seen:
                event.clear()
                await asyncio.wait_for(event.wait(), SWITCH_WAIT)
        except TimeoutError:
            self.notice = "no answer to Ctrl-A x3"
            self.app.invalidate()
            return
        # Now in Xen: it was dom0, so press h and go back; now dom0: it was Xen.
        self.send(b"h" + SWITCH_KEYS if self.target == SWITCH_TARGET_XEN else SWITCH_KEYS + b"h")

    # ---- received bytes ------------------------------------------------------------------

    def _from_reader(self, data: bytes | None) -> None:
        """Reader thread: queue, and wake the loop once per batch."""
        with self._lock:
            wake = not self._pending
            self._pending.append(data)
        if wake and self.loop is not None:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for data in batch:
            if data is None:
                self.closed_by_host = True
                if self.app.is_running and not self.app.future.done():
                    self.app.exit(result=1)
                return
            self.received(data)
        self.app.invalidate()

    def received(self, data: bytes) -> None:
        self.screen.feed_bytes(data)
        buf = self._tail + data
        for m in SWITCH_RE.finditer(buf):
            if m.end() > len(self._tail):  # a new message, not one seen last time
                self.target = m.group(1).decode("latin-1")
                self.switches += 1
                if self._switch_event is not None:
                    self._switch_event.set()
        self._tail = buf[-96:]

    # ---- run -----------------------------------------------------------------------------

    def _started(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._switch_event = asyncio.Event()
        self.link.start(self._from_reader)

    def run(self) -> int:
        try:
            rc = self.app.run(pre_run=self._started)
        finally:
            self.link.close()
        return 1 if rc is None else rc


def main(url: str) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        sys.stderr.write("xenconsole: error: connect needs a terminal\n")
        return 2
    try:
        link = open_link(url)
    except LinkUsageError as e:
        sys.stderr.write(f"xenconsole: error: {e}\n")
        return 2
    except LinkError as e:
        sys.stderr.write(f"xenconsole: error: {e}\n")
        return 1
    session = ClientSession(link)
    rc = session.run()
    if session.closed_by_host:
        sys.stderr.write(f"xenconsole: connection to {url} closed by the host\n")
    else:
        sys.stdout.write(f"xenconsole: disconnected from {url}\n")
    return rc
