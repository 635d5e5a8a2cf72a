"""Destroy and `R` give everything back at once; keys that walk domains respect teardown.

Issue 15 findings 6 and 7: a destroyed domain's vCPUs and Unicorn instances were kept alive
by reference cycles until `gc.collect()` (the binding's hook callbacks close over the Uc and
the vCPU's bound methods; vCPU <-> domain <-> shadow), and `S` blew the shadow tables of a
domain a crashing vCPU's thread was tearing down (`'S' handler failed: KeyError: (mfn, t)`).
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
from guest_helpers import Lines, asm_guest, create, new_machine, wait_for

import keyhandlers
from emu.audit import audit
from keyhandlers.dispatch import handle_keypress

keyhandlers.load_builtin()


@pytest.fixture
def machine():
    m = new_machine(memory=256 << 20, cpus=2)
    yield m
    m.shutdown()


@pytest.fixture
def no_gc():
    """Only reference counting frees anything during the test."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if was:
        gc.enable()


def refs_of(dom) -> list[weakref.ref]:
    out = [weakref.ref(dom)]
    for v in dom.vcpus:
        out += [weakref.ref(v), weakref.ref(v.uc)]
    return out


def alive(refs: list[weakref.ref]) -> list[str]:
    return [type(o).__name__ for o in (r() for r in refs) if o is not None]


@pytest.mark.timeout(60)
def test_destroy_frees_vcpus_and_unicorn_without_the_collector(machine, no_gc):
    refs = []
    for i, w in enumerate(["idle", "touch:pages=64", "random:ws=64,write=1", "stream:pages=32"]):
        dom = create(machine, f"g{i}", w, memory=2, vcpus=1 + i % 2)
        assert wait_for(lambda d=dom: sum(v.cpu_time_ns for v in d.vcpus) > 0)
        refs += refs_of(dom)
        machine.destroy_domain(dom)
        del dom
    # The pCPU thread that last ran a vCPU drops its local reference when it loops.
    assert wait_for(lambda: alive(refs) == [], timeout=5), alive(refs)
    assert audit(machine) == []


@pytest.mark.timeout(60)
def test_a_crashed_domain_is_freed_without_the_collector(machine, no_gc, tmp_path):
    lines = Lines(machine)
    dom = asm_guest(
        machine,
        tmp_path,
        "crasher",
        "mov rcx, 100000\nspin: dec rcx\njnz spin\nud2\n",
        on_reboot="destroy",  # the triple fault's SHUTDOWN_reboot must not restart it
    )
    refs = refs_of(dom)
    domid = dom.domid
    del dom
    assert wait_for(lambda: domid not in machine.domains)
    assert f"d{domid}v0 Triple fault - invoking HVM shutdown action" in lines.text
    # The pCPU thread that ran the crash may still be leaving its loop iteration.
    assert wait_for(lambda: alive(refs) == [], timeout=5)


@pytest.mark.timeout(60)
def test_machine_shutdown_releases_every_unicorn_and_the_ram(no_gc):
    m = new_machine(memory=256 << 20, cpus=2)
    doms = [create(m, f"s{i}", "touch:pages=2048,write=1", memory=16) for i in range(3)]
    # Each guest has written its 8 MiB arena once it yields the pCPU for good.
    assert wait_for(lambda: m.ram.resident_bytes() > 3 * 2048 * 4096, timeout=30)
    ucs = [weakref.ref(v.uc) for d in doms for v in d.vcpus]
    m.shutdown()
    assert alive(ucs) == []
    assert [v.uc for d in doms for v in d.vcpus] == [None] * 3
    assert m.ram.resident_bytes() == 0  # every page back to the OS
    m.shutdown()  # twice is harmless


@pytest.mark.timeout(60)
def test_S_never_blows_the_tables_of_a_domain_being_torn_down(machine):
    """Deterministic form of the race: a destroy stops between its HVM hook (vCPUs off the
    pCPUs) and the shadow teardown while `S` is pressed on another thread."""
    lines = Lines(machine)
    dom = create(machine, "victim", "touch:pages=64", memory=4)
    assert wait_for(lambda: sum(v.cpu_time_ns for v in dom.vcpus) > 0)
    inside, go = threading.Event(), threading.Event()

    def pause_teardown(d) -> None:
        if d is dom:
            inside.set()
            go.wait(10)

    machine.hooks.domain_destroying.insert(1, pause_teardown)  # after HVM's, before shadow's
    blown = []
    paging = dom.paging
    real_blow = paging.blow_tables
    paging.blow_tables = lambda: (blown.append(dom.is_dying), real_blow())
    destroyer = threading.Thread(target=machine.destroy_domain, args=(dom,))
    destroyer.start()
    assert inside.wait(10)
    presser = threading.Thread(target=handle_keypress, args=(machine, "S"))
    presser.start()
    presser.join(0.5)  # fixed: waits for the destroy; unfixed: blows the dying domain now
    go.set()
    destroyer.join(10)
    presser.join(10)
    assert not destroyer.is_alive() and not presser.is_alive()
    assert blown == []
    assert "handler failed" not in lines.text
    assert "(XEN) 'S' pressed -> blowing all shadow tables" in lines.text


@pytest.mark.e2e  # a long whole-machine scenario: outside the fast part
@pytest.mark.timeout(120)
def test_S_and_Z_between_rounds_of_crashing_guests(machine, tmp_path):
    """The reproduction from the issue, in process: guests that crash within milliseconds,
    `S` and `Z` pressed between rounds."""
    lines = Lines(machine)
    (tmp_path / "crash.S").write_text("ud2\n")
    (tmp_path / "spin.S").write_text("mov rcx, 20000\nspin: dec rcx\njnz spin\nud2\n")
    n = 0
    end = time.monotonic() + 6
    while time.monotonic() < end:
        for i in range(6):
            src = tmp_path / ("crash.S" if i % 2 else "spin.S")
            create(machine, f"c{n}", f"asm:{src}", memory=2, on_reboot="destroy")
            n += 1
        handle_keypress(machine, "S")
        handle_keypress(machine, "Z")
    assert wait_for(lambda: len(machine.domains) == 1, timeout=20)
    assert n >= 30
    assert lines.text.count("Triple fault - invoking HVM shutdown action") == n
    assert "handler failed" not in lines.text
    assert audit(machine) == []
