"""A small VT100 screen model: what a terminal would show for a console's output bytes.

`xenconsole connect` draws the console inside a prompt_toolkit layout (above its status
bar), so it needs the screen a terminal would have shown: printable text with line wrap,
CR, LF, BS, TAB, scrolling, and the CSI sequences shells and prompt_toolkit use (cursor
moves, erase in line/display). Colours and modes are accepted and ignored. Tests also use it
to read back what the client drew.
"""

from __future__ import annotations

import codecs
import re

_CSI = re.compile(r"\x1b\[([?>=!]?)([0-9;]*)([ -/]*)([@-~])")
_OTHER_ESC = re.compile(r"\x1b(?:\][^\x07\x1b]*(?:\x07|\x1b\\)|[()*+#%][0-~]|[ -/]*[0-~])")
_TEXT = re.compile(r"[^\x00-\x1f\x7f\x1b]+")


class Screen:
    """A `cols` x `rows` character grid with a cursor; the top line scrolls off."""

    def __init__(self, cols: int = 80, rows: int = 24) -> None:
        self.cols, self.rows = max(1, cols), max(1, rows)
        self.lines = [[" "] * self.cols for _ in range(self.rows)]
        self.x = self.y = 0
        self.wrap_pending = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # an escape sequence cut by a chunk boundary

    # ---- input ----------------------------------------------------------------------------

    def feed_bytes(self, data: bytes) -> None:
        self.feed(self._decoder.decode(data))

    def feed(self, text: str) -> None:
        text = self._partial + text
        self._partial = ""
        i, n = 0, len(text)
        while i < n:
            m = _TEXT.match(text, i)
            if m:
                self._put(m.group())
                i = m.end()
                continue
            c = text[i]
            if c == "\x1b":
                csi = text.startswith("\x1b[", i)
                m = _CSI.match(text, i) if csi else _OTHER_ESC.match(text, i)
                if m is None:
                    if n - i < 64:  # maybe incomplete: wait for the rest
                        self._partial = text[i:]
                        return
                    i += 1  # garbage after ESC: drop the ESC
                    continue
                if m.re is _CSI:
                    self._csi(m.group(1), m.group(2), m.group(4))
                i = m.end()
                continue
            self._control(c)
            i += 1

    def _put(self, s: str) -> None:
        while s:
            if self.wrap_pending:
                self.x = 0
                self._linefeed()
                self.wrap_pending = False
            room = self.cols - self.x
            part, s = s[:room], s[room:]
            self.lines[self.y][self.x : self.x + len(part)] = list(part)
            self.x += len(part)
            if self.x >= self.cols:
                self.x = self.cols - 1
                self.wrap_pending = True

    def _linefeed(self) -> None:
        if self.y == self.rows - 1:
            self.lines.pop(0)
            self.lines.append([" "] * self.cols)
        else:
            self.y += 1

    def _control(self, c: str) -> None:
        self.wrap_pending = False if c in "\r\n\b" else self.wrap_pending
        if c == "\r":
            self.x = 0
        elif c in "\n\x0b\x0c":
            self._linefeed()
        elif c == "\b":
            self.x = max(0, self.x - 1)
        elif c == "\t":
            self.x = min(self.cols - 1, (self.x // 8 + 1) * 8)
        # BEL, NUL, SO/SI and the rest show nothing.

    def _csi(self, private: str, params: str, final: str) -> None:
        args = [int(p) if p else 0 for p in params.split(";")] if params else []

        def arg(i: int, default: int) -> int:
            return args[i] if len(args) > i and args[i] else default

        if private:
            return  # DEC private modes (alternate screen, cursor visibility, ...)
        self.wrap_pending = False
        if final == "A":
            self.y = max(0, self.y - arg(0, 1))
        elif final in "Be":
            self.y = min(self.rows - 1, self.y + arg(0, 1))
        elif final in "Ca":
            self.x = min(self.cols - 1, self.x + arg(0, 1))
        elif final == "D":
            self.x = max(0, self.x - arg(0, 1))
        elif final == "G" or final == "`":
            self.x = min(self.cols - 1, arg(0, 1) - 1)
        elif final == "d":
            self.y = min(self.rows - 1, arg(0, 1) - 1)
        elif final in "Hf":
            self.y = min(self.rows - 1, arg(0, 1) - 1)
            self.x = min(self.cols - 1, arg(1, 1) - 1)
        elif final == "K":
            self._erase_line(arg(0, 0))
        elif final == "J":
            mode = arg(0, 0)
            if mode == 0:
                self._erase_line(0)
                for row in self.lines[self.y + 1 :]:
                    row[:] = [" "] * self.cols
            elif mode == 1:
                self._erase_line(1)
                for row in self.lines[: self.y]:
                    row[:] = [" "] * self.cols
            else:
                for row in self.lines:
                    row[:] = [" "] * self.cols
        # SGR (m) and everything else: no visible effect on the text.

    def _erase_line(self, mode: int) -> None:
        row = self.lines[self.y]
        if mode == 0:
            row[self.x :] = [" "] * (self.cols - self.x)
        elif mode == 1:
            row[: self.x + 1] = [" "] * (self.x + 1)
        else:
            row[:] = [" "] * self.cols

    # ---- output ---------------------------------------------------------------------------

    def resize(self, cols: int, rows: int) -> None:
        """Keep the bottom of the screen (where the cursor usually is), as xterm does."""
        cols, rows = max(1, cols), max(1, rows)
        if cols != self.cols:
            for i, row in enumerate(self.lines):
                self.lines[i] = (row + [" "] * cols)[:cols]
            self.cols = cols
            self.x = min(self.x, cols - 1)
        if rows < self.rows:
            drop = max(0, min(self.rows - rows, self.y - rows + 1))
            del self.lines[:drop]
            del self.lines[rows:]
            self.y -= drop
        elif rows > self.rows:
            self.lines += [[" "] * cols for _ in range(rows - self.rows)]
        self.rows = rows
        self.y = min(self.y, rows - 1)
        self.wrap_pending = False

    def display(self) -> list[str]:
        """Every row as text, trailing blanks removed."""
        return ["".join(row).rstrip() for row in self.lines]

    def text(self) -> str:
        return "\n".join(self.display())
