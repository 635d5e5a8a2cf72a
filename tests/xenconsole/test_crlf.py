"""CR LF is one Enter only when the pair arrives together (issue 13, defect 1).

A terminal's line discipline folds nothing across reads from different writers; the dom0
shell folds a CR LF pair only inside one chunk of input as it came from one client.
"""

from __future__ import annotations

import pytest

from tests.shell_host import Host, P


@pytest.fixture(scope="module")
def host() -> Host:
    return Host()


@pytest.mark.timeout(60)
def test_pair_in_one_chunk_is_one_enter(host: Host) -> None:
    assert host.type(b"\r\n") == b"\r\n" + P


@pytest.mark.timeout(60)
def test_cr_then_lf_in_separate_chunks_are_two_enters(host: Host) -> None:
    # labgrid's pattern: a person's Enter (CR), then SerialDriver's sendline("") (LF).
    assert host.type(b"\r") == b"\r\n" + P
    assert host.type(b"\n") == b"\r\n" + P


@pytest.mark.timeout(60)
def test_lone_lf_and_lone_cr(host: Host) -> None:
    assert host.type(b"\n") == b"\r\n" + P
    assert host.type(b"\n\n") == b"\r\n" + P + b"\r\n" + P
    assert host.type(b"\r\r") == b"\r\n" + P + b"\r\n" + P
    assert host.type(b"echo a\r\necho b\n") == b"echo a\r\na\r\n" + P + b"echo b\r\nb\r\n" + P


@pytest.mark.timeout(60)
def test_chunks_typed_before_dom0_keep_their_boundaries() -> None:
    h = Host.__new__(Host)
    Host.__init__(h)
    sh = h.shell
    sh.ready = False
    sh.rx(b"\r")
    sh.rx(b"\n")
    h.out.clear()
    sh.prompt()
    assert bytes(h.out) == P + b"\r\n" + P + b"\r\n" + P
