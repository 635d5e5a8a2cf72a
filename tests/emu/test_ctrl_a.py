"""Ctrl-A x3 input switching on emu.console.HypervisorConsole, byte for byte.

Every byte that reaches Xen or dom0, and every byte that goes out on the serial line, is
recorded in one ordered event list, so both content and order are checked.
"""

from __future__ import annotations

import pytest

from emu.console import RX_DOM0, RX_XEN, HypervisorConsole
from emu.host import HostConfig
from emu.machine import Machine
from keyhandlers import KEY_TABLE
from keyhandlers.dispatch import XenKeyInput

TO_XEN = b"(XEN) *** Serial input to Xen (type 'CTRL-a' three times to switch input)\r\n"
TO_DOM0 = b"(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"


class Line:
    """A console whose two input targets and serial output are recorded in order."""

    def __init__(self, target: int = RX_DOM0) -> None:
        self.con = HypervisorConsole(nr_cpus=1)
        self.events: list[tuple[str, bytes]] = []
        self.con.xen_rx = lambda c: self._add("xen", bytes([c]))
        self.con.dom0_rx = lambda b: self._add("dom0", bytes(b))
        self.con.sinks.append(lambda b: self._add("out", bytes(b)))
        self.con.console_rx = target

    def _add(self, who: str, data: bytes) -> None:
        if self.events and self.events[-1][0] == who:
            self.events[-1] = (who, self.events[-1][1] + data)
        else:
            self.events.append((who, data))

    def rx(self, *chunks: bytes) -> list[tuple[str, bytes]]:
        for c in chunks:
            self.con.serial_rx(c)
        out, self.events = self.events, []
        return out


def test_switch_messages_are_exact():
    from emu.console import switch_message

    assert switch_message(False).encode() + b"\r\n" == TO_XEN[len(b"(XEN) ") :]
    assert switch_message(True).encode() + b"\r\n" == TO_DOM0[len(b"(XEN) ") :]


def test_three_ctrl_a_switch_dom0_to_xen_and_back():
    line = Line(RX_DOM0)
    assert line.rx(b"\x01\x01\x01") == [("out", TO_XEN)]
    assert line.con.console_rx == RX_XEN
    assert line.rx(b"\x01\x01\x01") == [("out", TO_DOM0)]
    assert line.con.console_rx == RX_DOM0


def test_input_starts_with_xen():
    assert HypervisorConsole(nr_cpus=1).console_rx == RX_XEN


def test_switch_mid_chunk_splits_delivery():
    line = Line(RX_DOM0)
    assert line.rx(b"ab\x01\x01\x01cd") == [("dom0", b"ab"), ("out", TO_XEN), ("xen", b"cd")]


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("target", [RX_DOM0, RX_XEN])
def test_pending_ctrl_a_replayed_to_current_target_before_next_byte(n, target):
    who = "dom0" if target == RX_DOM0 else "xen"
    line = Line(target)
    assert line.rx(b"\x01" * n + b"x") == [(who, b"\x01" * n + b"x")]
    assert line.con.console_rx == target


@pytest.mark.parametrize("n", [1, 2])
def test_pending_ctrl_a_replayed_across_calls(n):
    line = Line(RX_DOM0)
    assert line.rx(*[b"\x01"] * n) == []  # swallowed while pending
    assert line.rx(b"q") == [("dom0", b"\x01" * n + b"q")]


def test_ctrl_a_inside_a_run_of_text():
    line = Line(RX_DOM0)
    assert line.rx(b"a\x01b\x01\x01c") == [("dom0", b"a\x01b\x01\x01c")]


def test_no_timeout_ctrl_a_in_separate_calls_count():
    line = Line(RX_DOM0)
    assert line.rx(b"\x01") == []
    assert line.rx(b"\x01") == []
    assert line.rx(b"\x01") == [("out", TO_XEN)]
    assert line.rx(b"\x01", b"\x01\x01") == [("out", TO_DOM0)]


def test_fourth_ctrl_a_starts_a_new_count():
    line = Line(RX_DOM0)
    # 4: switch to Xen, one pending; the next byte replays it to the *new* target
    assert line.rx(b"\x01\x01\x01\x01x") == [("out", TO_XEN), ("xen", b"\x01x")]
    # 5: switch to DOM0, two pending
    assert line.rx(b"\x01\x01\x01\x01\x01y") == [("out", TO_DOM0), ("dom0", b"\x01\x01y")]
    # 6: two switches, nothing delivered
    assert line.rx(b"\x01" * 6) == [("out", TO_XEN + TO_DOM0)]
    assert line.con.console_rx == RX_DOM0
    # 4 then 2 more in a later call: the second group of three completes
    assert line.rx(b"\x01" * 4, b"\x01\x01") == [("out", TO_XEN + TO_DOM0)]


def test_bytes_are_masked_to_seven_bits():
    line = Line(RX_DOM0)
    assert line.rx(b"\x81\x81\x81") == [("out", TO_XEN)]  # 0x81 & 0x7f is Ctrl-A
    assert line.rx(b"\x01\x81", b"\x01") == [("out", TO_DOM0)]
    assert line.rx(b"\xe1\xff\x8d") == [("dom0", b"a\x7f\r")]
    assert line.rx(b"\x81z") == [("dom0", b"\x01z")]


def test_ctrl_a_to_xen_is_ignored_by_key_dispatch():
    """No handler for 0x01: replayed Ctrl-As reach Xen and print nothing."""
    assert "\x01" not in KEY_TABLE
    machine = Machine(HostConfig())
    out = bytearray()
    con = machine.console
    con.sinks.append(out.extend)
    con.xen_rx = XenKeyInput(machine)
    assert con.console_rx == RX_XEN
    con.serial_rx(b"\x01")
    con.serial_rx(b"\x01")
    con.serial_rx(b"\x02")  # replays two Ctrl-As to Xen, then Ctrl-B: no handlers either
    assert bytes(out) == b""
    con.serial_rx(b"\x01h")  # one Ctrl-A replayed and ignored, then `h` runs
    assert bytes(out).startswith(b"(XEN) 'h' pressed -> showing installed handlers\r\n")
    out.clear()
    con.serial_rx(b"\x01\x01\x01")
    assert bytes(out) == TO_DOM0
