"""A sans-IO telnet codec for a serial console (RFC 854/855, NAWS RFC 1073), with a server
and a client role, as Twisted's `Telnet` is one class for both ends.

Written for the defects of twisted.conch.telnet: unknown IAC commands are ignored (never
fatal), a bare CR is delivered at once, subnegotiation is capped, outgoing 0xFF is always
doubled, and negotiation answers only changes of state, so option loops die out.

The roles differ only in policy (`Role`): which options each end may enable, what `start()`
asks for, and the NVT details of the terminal's end. The server (xenconsole's telnet
listener) receives what a terminal types: CR LF and CR NUL reach the console as CR, and IP,
BRK, AYT, EC and EL act. The client (`xenconsole connect`, `xenconsole.expect`) receives the
console's bytes untouched, sends CR as CR NUL (NVT) and reports its window by NAWS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

IAC, DONT, DO, WONT, WILL, SB = 255, 254, 253, 252, 251, 250
GA, EL, EC, AYT, AO, IP, BRK, DM, NOP, SE = 249, 248, 247, 246, 245, 244, 243, 242, 241, 240
BINARY, ECHO, SGA, TTYPE, NAWS, LINEMODE = 0, 1, 3, 24, 31, 34
CR, LF, NUL = 13, 10, 0

SB_MAX = 512
_SPECIAL = re.compile(rb"[\xff\r]")

_DATA, _IAC, _OPT, _SB, _SB_IAC = range(5)


def escape(data: bytes) -> bytes:
    """Output: every 0xFF byte doubled, nothing else touched."""
    return data.replace(b"\xff", b"\xff\xff")


@dataclass(frozen=True)
class Role:
    name: str
    local: frozenset[int]  # options this end agrees to do (it answers DO with WILL)
    remote: frozenset[int]  # options this end lets the peer do (it answers WILL with DO)
    opening: tuple[tuple[int, int], ...]  # (WILL or DO, option) that `start()` asks for
    terminal: bool  # this end is the user's terminal (client), not the host


SERVER = Role(
    "server",
    local=frozenset({ECHO, SGA, BINARY}),
    remote=frozenset({NAWS, BINARY, SGA}),
    opening=((WILL, ECHO), (WILL, SGA), (DO, NAWS)),  # character mode; the window size
    terminal=False,
)
CLIENT = Role(
    "client",
    local=frozenset({NAWS, SGA, BINARY}),
    remote=frozenset({ECHO, SGA, BINARY}),
    opening=(),  # the server leads
    terminal=True,
)


class TelnetCodec:
    """One end of a telnet connection: `feed` what arrives; application bytes go to
    `on_data`, negotiation answers to `send`; `encode` what the application writes."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        on_data: Callable[[bytes], None],
        on_break: Callable[[], None] = lambda: None,
        on_naws: Callable[[int, int], None] = lambda w, h: None,
        role: Role = SERVER,
        on_ayt: Callable[[], str] = lambda: "",
    ) -> None:
        self.send = send
        # What follows `[yes]` in the answer to AYT (the console server: who is attached).
        self.on_ayt = on_ayt
        self.on_data = on_data
        self.on_break = on_break
        self.on_naws = on_naws
        self.role = role
        self.us: dict[int, bool] = {}
        self.him: dict[int, bool] = {}
        self._asked_will: set[int] = set()
        self._asked_do: set[int] = set()
        self._state = _DATA
        self._cmd = 0
        self._sb = bytearray()
        self._cr_pending = False
        # The terminal's size: received by NAWS (server), or set with `set_window` (client).
        self.window: tuple[int, int] | None = None

    # ---- negotiation ----------------------------------------------------------------------

    def start(self) -> None:
        """Ask for what this role wants (the server: character mode and the window size)."""
        for cmd, opt in self.role.opening:
            if cmd == WILL:
                self.request_will(opt)
            else:
                self.request_do(opt)

    def request_will(self, opt: int) -> None:
        if not self.us.get(opt) and opt not in self._asked_will:
            self._asked_will.add(opt)
            self.send(bytes([IAC, WILL, opt]))

    def request_do(self, opt: int) -> None:
        if not self.him.get(opt) and opt not in self._asked_do:
            self._asked_do.add(opt)
            self.send(bytes([IAC, DO, opt]))

    def _negotiate(self, cmd: int, opt: int) -> None:
        local = cmd in (DO, DONT)  # about what we do, or about what the peer does
        state, asked = (self.us, self._asked_will) if local else (self.him, self._asked_do)
        yes, no = (WILL, WONT) if local else (DO, DONT)
        if cmd in (DO, WILL):
            if opt not in (self.role.local if local else self.role.remote):
                self.send(bytes([IAC, no, opt]))  # refused, every time it is asked
            elif not state.get(opt):
                state[opt] = True
                if opt not in asked:  # an answer to our own request needs none
                    self.send(bytes([IAC, yes, opt]))
                if local and opt == NAWS:
                    self._send_naws()
        elif state.get(opt):  # DONT / WONT for an enabled option: acknowledge once
            state[opt] = False
            self.send(bytes([IAC, no, opt]))
        asked.discard(opt)

    # ---- output ---------------------------------------------------------------------------

    def encode(self, data: bytes) -> bytes:
        """Application bytes for the wire: 0xFF doubled; from a terminal, also a CR not
        followed by LF goes as CR NUL (NVT), unless in BINARY mode."""
        data = escape(data)
        if self.role.terminal and not self.us.get(BINARY):
            data = data.replace(b"\r", b"\r\x00").replace(b"\r\x00\n", b"\r\n")
        return data

    def send_break(self) -> None:
        self.send(bytes([IAC, BRK]))

    def send_ayt(self) -> None:
        """Are You There: the console server answers `[yes]` and who is attached."""
        self.send(bytes([IAC, AYT]))

    def set_window(self, cols: int, rows: int) -> None:
        """The terminal's size changed: tell the peer, if it asked (DO NAWS)."""
        if self.window != (cols, rows):
            self.window = (cols, rows)
            self._send_naws()

    def _send_naws(self) -> None:
        if self.us.get(NAWS) and self.window is not None:
            cols, rows = (min(max(v, 0), 0xFFFF) for v in self.window)
            body = bytes([NAWS, cols >> 8, cols & 0xFF, rows >> 8, rows & 0xFF])
            self.send(bytes([IAC, SB]) + escape(body) + bytes([IAC, SE]))

    # ---- input ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            st = self._state
            if st == _DATA:
                if self._cr_pending:
                    self._cr_pending = False
                    if data[i] in (LF, NUL) and not self.him.get(BINARY):
                        i += 1  # CR LF / CR NUL: the CR already went through
                        continue
                m = _SPECIAL.search(data, i)
                j = m.start() if m else n
                out += data[i:j]
                if j >= n:
                    break
                if data[j] == CR:
                    out.append(CR)
                    self._cr_pending = not self.role.terminal
                else:
                    self._state = _IAC
                i = j + 1
            elif st == _IAC:
                c = data[i]
                i += 1
                self._state = _DATA
                if c == IAC:
                    out.append(IAC)
                elif c in (DO, DONT, WILL, WONT):
                    self._cmd = c
                    self._state = _OPT
                elif c == SB:
                    self._sb.clear()
                    self._state = _SB
                else:
                    if out:
                        self.on_data(bytes(out))
                        out.clear()
                    self._command(c)
            elif st == _OPT:
                self._state = _DATA
                self._negotiate(self._cmd, data[i])
                i += 1
            elif st == _SB:
                c = data[i]
                i += 1
                if c == IAC:
                    self._state = _SB_IAC
                elif len(self._sb) < SB_MAX:
                    self._sb.append(c)
                else:
                    # Unterminated or oversized: abandon it and keep the client; from this
                    # byte on, input is data again, so a lost SE costs at most SB_MAX bytes.
                    self._sb.clear()
                    self._state = _DATA
                    i -= 1
            elif st == _SB_IAC:
                c = data[i]
                i += 1
                if c == IAC:
                    self._state = _SB
                    if len(self._sb) < SB_MAX:
                        self._sb.append(IAC)
                elif c == SE:
                    self._state = _DATA
                    self._subnegotiation(bytes(self._sb))
                    self._sb.clear()
                else:  # IAC <cmd> inside SB: end the SB, handle the command
                    self._sb.clear()
                    self._state = _IAC
                    i -= 1
        if out:
            self.on_data(bytes(out))

    def _command(self, c: int) -> None:
        if self.role.terminal:
            return  # what a terminal sends (IP, BRK, AYT, ...) means nothing coming back
        if c == IP:
            self.on_data(b"\x03")
        elif c == BRK:
            self.on_break()
        elif c == AYT:
            self.send(b"\r\n[yes]\r\n" + self.on_ayt().encode("utf-8", "replace"))
        elif c == EC:
            self.on_data(b"\x7f")
        elif c == EL:
            self.on_data(b"\x15")
        # NOP, DM, GA, AO, EOR, ABORT, SUSP, EOF and unknown commands: ignored.

    def _subnegotiation(self, sb: bytes) -> None:
        if len(sb) == 5 and sb[0] == NAWS and NAWS in self.role.remote:
            w, h = (sb[1] << 8) | sb[2], (sb[3] << 8) | sb[4]
            self.window = (w, h)
            self.on_naws(w, h)
