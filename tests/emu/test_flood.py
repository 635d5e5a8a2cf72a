"""A guest that floods the console hypercall or a port cannot hold the host.

The flood guest writes 16 KiB with `console_io` in a loop (128 lines of 127 bytes each
call). Debug keys, pause and destroy must get its pCPU back (the hypercall is preempted
between 127-byte chunks by a continuation, as guest_console_write() in
xen/drivers/char/console.c is), the lines it prints must come out whole and in order
(a continuation never repeats or loses a byte), and with the guest log level rate-limited
(`G` then `-`) the lines beyond Xen's burst are suppressed and reported as Xen reports them.
"""

from __future__ import annotations

import re

import pytest
from guest_helpers import FLOOD, PORT_FLOOD, Lines, asm_guest, wait_for

from emu.ratelimit import PRINTK_RATELIMIT_BURST, PrintkRatelimit, suppressed_line
from keyhandlers import KEY_TABLE
from keyhandlers.dispatch import run_handler


def _press(m, key: str, serial: Lines) -> str:
    before = len(serial.chunks)
    run_handler(m, KEY_TABLE[key])
    return b"".join(serial.chunks[before:]).decode("latin-1")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", [FLOOD, PORT_FLOOD], ids=["console_io", "ports"])
def test_keys_pause_and_destroy_answer_during_a_flood(machine, tmp_path, source):
    m = machine
    serial = Lines(m)
    dom = asm_guest(m, tmp_path, "flood", source)
    v = dom.vcpus[0]
    busy = "hypercalls" if source is FLOOD else "runs"
    assert wait_for(lambda: v.stats[busy] > 20, timeout=60)
    out = _press(m, "d", serial)
    assert "(XEN) 'd' pressed -> dumping registers" in out
    assert "(XEN) *** Dumping CPU0 " in out and "(XEN) *** Dumping CPU1 " in out
    assert "(XEN) 'q' pressed -> dumping domain info" in _press(m, "q", serial)
    m.sched.pause_domain(dom)
    assert not v.running
    n = v.stats["runs"]
    m.sched.unpause_domain(dom)
    assert wait_for(lambda: v.stats["runs"] > n, timeout=30)
    if source is FLOOD:
        # the scheduler's kicks preempt the call (a kick may land between two calls, so wait)
        assert wait_for(lambda: v.stats["continuations"] > 0, timeout=30)
        lines = list(dom.hvm.console.lines)
        assert len(lines) >= 128 and set(lines) == {"A" * 127}
    m.destroy_domain(dom)
    assert dom.domid not in m.domains and not v.running


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
@pytest.mark.timeout(120)
def test_rate_limited_guest_lines_are_suppressed_and_reported(machine, tmp_path):
    m = machine
    serial = Lines(m)
    # As `G` then `-` leave them: guest lines (XENLOG_G_DEBUG, 3) between the lower and the
    # upper threshold go through printk_ratelimit().
    m.console.thresh["guest"] = [3, 4]
    dom = asm_guest(m, tmp_path, "flood", FLOOD)
    report = re.compile(r"\(XEN\) printk: (\d+) messages suppressed\.\r\n")
    # One line is allowed every 5 s after the burst of 10; the report comes with it.
    assert wait_for(lambda: report.search(b"".join(serial.chunks).decode("latin-1")), 30)
    text = b"".join(serial.chunks).decode("latin-1")
    m.destroy_domain(dom)
    first = report.search(text)
    printed = re.findall(rf"\(d{dom.domid}\) (A*)\r\n", text[: first.start()])
    assert printed == ["A" * 127] * PRINTK_RATELIMIT_BURST
    assert int(first.group(1)) > 0
    assert m.console.ratelimit.suppressed_total >= int(first.group(1))


def test_printk_ratelimit_is_xens_token_bucket():
    # __printk_ratelimit() (xen/drivers/char/console.c): a burst of 10, then one line per
    # 5 000 ms; refused lines are counted and handed to the next allowed line to report.
    now = [1_000_000]
    rl = PrintkRatelimit(now_ms=lambda: now[0])
    assert [rl() for _ in range(10)] == [(True, 0)] * 10
    assert [rl() for _ in range(7)] == [(False, 0)] * 7
    now[0] += 4_999
    assert rl() == (False, 0)
    now[0] += 1
    assert rl() == (True, 8)
    assert rl() == (False, 0)
    now[0] += 60_000  # a long quiet spell refills the burst, no more
    assert [rl()[0] for _ in range(11)] == [True] * 10 + [False]
    assert rl.suppressed_total == 10
    assert suppressed_line(8) == "printk: 8 messages suppressed.\n"
