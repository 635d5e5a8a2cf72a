"""printk rate limiting: `__printk_ratelimit()` of xen/drivers/char/console.c.

A token bucket in milliseconds shared by every rate-limited line (hypervisor and guest
alike, as Xen's static state is): at most `burst` lines at once, then one per `ratelimit_ms`.
Lines refused are counted, and the next line allowed is preceded by
`(XEN) printk: N messages suppressed.` -- the only report Xen gives of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PRINTK_RATELIMIT_MS = 5 * 1000  # printk_ratelimit_ms: minimum time in ms between messages
PRINTK_RATELIMIT_BURST = 10  # printk_ratelimit_burst: messages sent before rate limiting


def suppressed_line(lost: int) -> str:
    """The report of `lost` refused lines (printed after the `(XEN) ` prefix)."""
    return f"printk: {lost} messages suppressed.\n"


class PrintkRatelimit:
    def __init__(
        self,
        ratelimit_ms: int = PRINTK_RATELIMIT_MS,
        burst: int = PRINTK_RATELIMIT_BURST,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.ratelimit_ms = ratelimit_ms
        self.burst = burst
        self.now_ms = now_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self.toks = 10 * 5 * 1000  # static unsigned long toks = 10 * 5 * 1000
        self.last_msg: int | None = None
        self.missed = 0
        self.suppressed_total = 0  # every line ever refused (Xen keeps no such total)

    def __call__(self) -> tuple[bool, int]:
        """(allowed, lost): whether this line may print, and how many were refused before
        it that must now be reported (0 for none)."""
        ms = self.now_ms()
        # Xen's last_msg starts at 0 and NOW() counts from boot: the first call fills the
        # bucket, which the clamp below then limits to the burst.
        full = self.burst * self.ratelimit_ms
        self.toks += full if self.last_msg is None else ms - self.last_msg
        self.last_msg = ms
        self.toks = min(self.toks, full)
        if self.toks >= self.ratelimit_ms:
            lost, self.missed = self.missed, 0
            self.toks -= self.ratelimit_ms
            return True, lost
        self.missed += 1
        self.suppressed_total += 1
        return False, 0
