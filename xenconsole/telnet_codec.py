"""A sans-IO telnet codec for a serial console (RFC 854/855, NAWS RFC 1073).

Written for the defects of twisted.conch.telnet listed in reference/ecosystem.md §2a/§6:
unknown IAC commands are ignored (never fatal), a bare CR is delivered at once, CR LF and
CR NUL reach the console as CR, subnegotiation is capped, outgoing 0xFF is always doubled,
and negotiation answers only state changes so option loops die out.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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


class TelnetCodec:
    LOCAL_OPTIONS = frozenset({ECHO, SGA, BINARY})  # we may do these (client sends DO)
    REMOTE_OPTIONS = frozenset({NAWS, BINARY, SGA})  # the client may do these (client WILL)

    def __init__(
        self,
        send: Callable[[bytes], None],
        on_data: Callable[[bytes], None],
        on_break: Callable[[], None] = lambda: None,
        on_naws: Callable[[int, int], None] = lambda w, h: None,
    ) -> None:
        self.send = send
        self.on_data = on_data
        self.on_break = on_break
        self.on_naws = on_naws
        self.us: dict[int, bool] = {}
        self.him: dict[int, bool] = {}
        self._asked_will: set[int] = set()
        self._asked_do: set[int] = set()
        self._state = _DATA
        self._cmd = 0
        self._sb = bytearray()
        self._cr_pending = False
        self.window: tuple[int, int] | None = None

    # ---- negotiation ----------------------------------------------------------------------

    def start(self) -> None:
        """Character mode: we echo and suppress go-ahead; ask for the window size."""
        self.request_will(ECHO)
        self.request_will(SGA)
        self.request_do(NAWS)

    def request_will(self, opt: int) -> None:
        if not self.us.get(opt) and opt not in self._asked_will:
            self._asked_will.add(opt)
            self.send(bytes([IAC, WILL, opt]))

    def request_do(self, opt: int) -> None:
        if not self.him.get(opt) and opt not in self._asked_do:
            self._asked_do.add(opt)
            self.send(bytes([IAC, DO, opt]))

    def _negotiate(self, cmd: int, opt: int) -> None:
        if cmd == DO:
            if opt in self.LOCAL_OPTIONS:
                if not self.us.get(opt):
                    self.us[opt] = True
                    if opt not in self._asked_will:
                        self.send(bytes([IAC, WILL, opt]))
                self._asked_will.discard(opt)
            else:
                self.send(bytes([IAC, WONT, opt]))
        elif cmd == DONT:
            if self.us.get(opt):
                self.us[opt] = False
                self.send(bytes([IAC, WONT, opt]))
            self._asked_will.discard(opt)
        elif cmd == WILL:
            if opt in self.REMOTE_OPTIONS:
                if not self.him.get(opt):
                    self.him[opt] = True
                    if opt not in self._asked_do:
                        self.send(bytes([IAC, DO, opt]))
                self._asked_do.discard(opt)
            else:
                self.send(bytes([IAC, DONT, opt]))
        elif cmd == WONT:
            if self.him.get(opt):
                self.him[opt] = False
                self.send(bytes([IAC, DONT, opt]))
            self._asked_do.discard(opt)

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
                    self._cr_pending = True
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
        if c == IP:
            self.on_data(b"\x03")
        elif c == BRK:
            self.on_break()
        elif c == AYT:
            self.send(b"\r\n[yes]\r\n")
        elif c == EC:
            self.on_data(b"\x7f")
        elif c == EL:
            self.on_data(b"\x15")
        # NOP, DM, GA, AO, EOR, ABORT, SUSP, EOF and unknown commands: ignored.

    def _subnegotiation(self, sb: bytes) -> None:
        if len(sb) == 5 and sb[0] == NAWS:
            w, h = (sb[1] << 8) | sb[2], (sb[3] << 8) | sb[4]
            self.window = (w, h)
            self.on_naws(w, h)
