"""The hypervisor console: printk, the `(XEN) ` prefix, log levels, and serial input.

Modelled on xen/drivers/char/console.c: every output line leaves through `printk` (to the
serial line and the ring) and every input byte enters through `serial_rx`, which counts
Ctrl-A presses and hands bytes to Xen's key dispatch or to dom0.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from emu.conring import Conring, conring_size_for
from emu.ratelimit import PrintkRatelimit, suppressed_line

CONSOLE_PREFIX = "(XEN) "

# Log levels (xen/include/xen/config.h) and loglvl_str().
XENLOG_ERR, XENLOG_WARNING, XENLOG_INFO, XENLOG_DEBUG = 0, 1, 2, 3
LOGLVL_LAST = 4
_LOGLVL_STR = [
    "Nothing",
    "Errors",
    "Errors and warnings",
    "Errors, warnings and info",
    "All",
]

RX_XEN, RX_DOM0 = 0, 1

# Input switching (console.c: conswitch, switch_serial_input). This is the one home of the
# switch keys and messages: the clients (xenconsole.expect, xenconsole.connect) import them.
SWITCH_CHAR = "a"
SWITCH_CODE = ord(SWITCH_CHAR) - ord("a") + 1  # Ctrl-A
SWITCH_PRESSES = 3
SWITCH_KEYS = bytes([SWITCH_CODE]) * SWITCH_PRESSES  # what a client sends to switch input
SWITCH_TARGET_XEN, SWITCH_TARGET_DOM0 = "Xen", "DOM0"
SWITCH_MESSAGE = "*** Serial input to {target} (type 'CTRL-{char}' three times to switch input)"
# Recognises a switch message in console output; group 1 is where input goes now ("Xen",
# "DOM0", "DOM1", ...). `->` is the wording of Xen 4.4 to 4.11, which clients may meet too.
SWITCH_PATTERN = r"\*\*\* Serial input (?:to|->) (\w+)[ \r]"
SWITCH_RE = re.compile(SWITCH_PATTERN.encode())


def loglvl_str(lvl: int) -> str:
    return _LOGLVL_STR[lvl] if 0 <= lvl <= LOGLVL_LAST else "???"


def switch_message(to_dom0: bool) -> str:
    target = SWITCH_TARGET_DOM0 if to_dom0 else SWITCH_TARGET_XEN
    return SWITCH_MESSAGE.format(target=target, char=SWITCH_CHAR)


class HypervisorConsole:
    """Xen's console state. Sinks receive the exact bytes that go out on the serial line.

    (Not `xenconsole.expect.Console`, the scripting client that attaches to this line.)
    """

    def __init__(self, nr_cpus: int = 1, debug_build: bool = True) -> None:
        # Debug builds print everything (lower/upper thresholds 4/4 for both sets).
        lower = LOGLVL_LAST if debug_build else 3
        self.thresh = {
            "standard": [lower, lower],
            "guest": [LOGLVL_LAST, LOGLVL_LAST] if debug_build else [0, 2],
        }
        self.thresh_adj = "standard"
        self.ring = Conring(conring_size_for(nr_cpus, lower))
        self.sinks: list[Callable[[bytes], None]] = []
        self._line_open = False
        self._log_everything = 0
        self.ratelimit = PrintkRatelimit()
        self.lock = threading.RLock()
        # Input side (serial_rx).
        self.console_rx = RX_XEN
        self.switch_code = SWITCH_CODE
        self._switch_count = 0
        self.xen_rx: Callable[[int], None] = lambda c: None
        self.dom0_rx: Callable[[bytes], None] = lambda b: None

    # ---- output -------------------------------------------------------------------------

    def _emit(self, text: str, prefix: str, to_ring: bool = True) -> None:
        out = []
        for piece in text.splitlines(keepends=True):
            if not self._line_open:
                out.append(prefix)
            out.append(piece)
            self._line_open = not piece.endswith("\n")
        data = "".join(out).encode("latin-1", "replace")
        if to_ring:
            self.ring.write(data)
        self.serial_write(data.replace(b"\n", b"\r\n"))

    def _prefix_check(self, level: int, which: str) -> bool:
        """printk_prefix_check(): print below the lower threshold, rate-limit up to the
        upper one (reporting suppressed lines first, as __printk_ratelimit does)."""
        lower, upper = self.thresh[which]
        if self._log_everything or level < lower:
            return True
        if level >= upper:
            return False
        ok, lost = self.ratelimit()
        if lost:
            self._emit(suppressed_line(lost), CONSOLE_PREFIX)
        return ok

    def printk(self, text: str, level: int = XENLOG_INFO, guest: bool = False) -> None:
        """Print hypervisor text; each new line starts with `(XEN) `. `guest`: a XENLOG_G_*
        level, held to the guest_loglvl thresholds."""
        with self.lock:
            if not self._prefix_check(level, "guest" if guest else "standard"):
                return
            self._emit(text, CONSOLE_PREFIX)

    def guest_printk(self, domid: int, text: str, level: int = XENLOG_INFO) -> None:
        """A guest's debug line (port 0xe9), prefixed `(dN) `."""
        with self.lock:
            if not self._prefix_check(level, "guest"):
                return
            if self._line_open:
                self._emit("\n", "")
            self._emit(text if text.endswith("\n") else text + "\n", f"(d{domid}) ")

    def putstr(self, text: str) -> None:
        """Unprefixed output to serial and ring (the boot banner: `__putstr`)."""
        with self.lock:
            data = text.encode("latin-1", "replace")
            self.ring.write(data)
            self.serial_write(data.replace(b"\n", b"\r\n"))

    def serial_write(self, data: bytes) -> None:
        """Bytes straight to the serial line, not the ring (dom0 output, `w` replay)."""
        with self.lock:
            for sink in list(self.sinks):
                sink(data)

    def end_input_line(self, text: str) -> None:
        """Close a prompt line whose characters were echoed: the ring gets the text."""
        with self.lock:
            self.ring.write(text.encode("latin-1", "replace") + b"\n")
            self.serial_write(b"\r\n" if text != "^C" else b"^C\r\n")
            self._line_open = False

    def log_everything(self) -> _LogEverything:
        """Context manager: while a debug key runs, every level prints."""
        return _LogEverything(self)

    def adjust_thresh(self, key: str, delta: int) -> None:
        # As do_inc_thresh/do_dec_thresh: up is unbounded, down stops at 0, both print.
        lower_upper = self.thresh[self.thresh_adj]
        lower_upper[0] = max(0, lower_upper[0] + delta)
        if lower_upper[1] < lower_upper[0]:
            lower_upper[1] = lower_upper[0]
        self.printk(
            f"'{key}' pressed -> {self.thresh_adj} log level: {loglvl_str(lower_upper[0])}"
            f" (rate limited {loglvl_str(lower_upper[1])})\n"
        )

    # ---- input --------------------------------------------------------------------------

    def switch_input(self) -> None:
        self.console_rx = RX_DOM0 if self.console_rx == RX_XEN else RX_XEN
        self.printk(switch_message(self.console_rx == RX_DOM0) + "\n")

    def _deliver(self, data: bytes) -> None:
        if self.console_rx == RX_XEN:
            for c in data:
                self.xen_rx(c)
        else:
            self.dom0_rx(data)

    def serial_rx(self, data: bytes) -> None:
        """Every input byte from every client enters here (serial_rx() in console.c)."""
        code = self.switch_code
        run_start = 0
        masked = bytes(b & 0x7F for b in data)
        for i, c in enumerate(masked):
            if c != code:
                if self._switch_count:
                    # Pending Ctrl-As go to the current target before this byte.
                    pending, self._switch_count = self._switch_count, 0
                    self._deliver(bytes([code]) * pending)
                continue
            if i > run_start:
                self._deliver(masked[run_start:i])
            run_start = i + 1
            self._switch_count += 1
            if self._switch_count == SWITCH_PRESSES:
                self._switch_count = 0
                self.switch_input()
        # Flush the tail, and any Ctrl-As replayed just before it.
        if run_start < len(masked):
            self._deliver(masked[run_start:])


class _LogEverything:
    def __init__(self, console: HypervisorConsole) -> None:
        self.console = console

    def __enter__(self) -> None:
        self.console._log_everything += 1

    def __exit__(self, *exc: object) -> None:
        self.console._log_everything -= 1
