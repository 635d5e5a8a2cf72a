"""`xl console` on a control connection: guest lines and the domain's end arrive on other
threads (a vCPU's, or the one that destroyed the domain), and must reach the connection on
the reactor's thread, in order.

The bug this pins down (issue 11): the control shell wrote to its Twisted transport from a
vCPU thread when the domain powered off; that raced the reactor's own bookkeeping of file
descriptors, and a later, unrelated control request was sometimes never read."""

from __future__ import annotations

import threading

import pytest
from shell_host import Host
from twisted.internet import reactor
from twisted.python import threadable

from emu.host import DomainSpec
from xenconsole.control import ControlShell
from xenconsole.dom0.fs import Dom0Fs


@pytest.fixture
def io_thread():
    """This test's thread is the reactor's IO thread (as the server's reactor thread is)."""
    threadable.registerAsIOThread()
    try:
        yield threading.get_ident()
    finally:
        threadable.ioThread = None
        reactor.threadCallQueue.clear()


@pytest.mark.timeout(60)
def test_console_lines_and_end_reach_the_connection_on_the_reactor_thread(io_thread, tmp_path):
    host = Host()
    m = host.machine
    try:
        dom = m.create_domain(DomainSpec(name="c", memory=4, workload="idle"), paused=True)
        sent: list[tuple[int, dict]] = []
        sh = ControlShell(
            m, Dom0Fs(str(tmp_path)), lambda msg: sent.append((threading.get_ident(), msg))
        )
        statuses: list[int] = []
        sh.run_xl(["console", "c"]).addCallback(statuses.append)
        assert statuses == [] and sh.foreground is not None  # attached, waiting

        def guest_side() -> None:  # what the guest's vCPU thread does: print, power off
            dom.hvm.console.emit_line("one")
            dom.hvm.console.emit_line("two")
            m.destroy_domain(dom)

        t = threading.Thread(target=guest_side)
        t.start()
        t.join(30)
        assert not t.is_alive()
        assert sent == []  # nothing reached the connection from the other thread
        reactor.runUntilCurrent()  # the reactor's next turn
        assert sent == [(io_thread, {"out": "one\n"}), (io_thread, {"out": "two\n"})]
        assert statuses == [0] and sh.foreground is None
    finally:
        m.shutdown()


@pytest.mark.timeout(60)
def test_console_of_a_domain_already_gone_returns(io_thread, tmp_path):
    host = Host()
    m = host.machine
    try:
        dom = m.create_domain(DomainSpec(name="g", memory=4, workload="idle"), paused=True)
        sh = ControlShell(m, Dom0Fs(str(tmp_path)), lambda msg: None)
        statuses: list[int] = []
        sh.run_xl(["console", "g"]).addCallback(statuses.append)
        m.destroy_domain(dom)  # on the reactor's thread this time (`xl destroy`)
        reactor.runUntilCurrent()
        assert statuses == [0] and sh.foreground is None
    finally:
        m.shutdown()
