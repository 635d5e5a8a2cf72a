"""Option checks of `xenconsole serve` (issue 15 finding 9): loopback spellings, PTY links."""

from __future__ import annotations

import os

import pytest

from xenconsole.options import is_loopback
from xenconsole.transports.pty import stale_pty_link


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "127.255.0.9",
        "2130706433",
        "0x7f.1",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "localhost",
        "LOCALHOST",
        "LocalHost",
    ],
)
def test_loopback_spellings_are_loopback(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "128.0.0.1",
        "example.com",
        "1.2.3.4.5",
        "localhost.example.com",
        "",
    ],
)
def test_other_addresses_are_not(host):
    assert not is_loopback(host)


def test_only_a_dangling_pty_link_is_stale(tmp_path):
    dead = tmp_path / "dead"
    dead.symlink_to("/dev/pts/does-not-exist")
    assert stale_pty_link(str(dead))
    master, slave = os.openpty()
    try:
        live = tmp_path / "live"
        live.symlink_to(os.ttyname(slave))
        assert not stale_pty_link(str(live))  # another server's or a terminal's PTY
    finally:
        os.close(master)
        os.close(slave)
    other = tmp_path / "other"
    other.symlink_to(tmp_path / "somewhere-else")
    assert not stale_pty_link(str(other))  # dangling, but not a PTY link
    f = tmp_path / "file"
    f.write_text("x")
    assert not stale_pty_link(str(f))
    assert not stale_pty_link(str(tmp_path / "absent"))
