"""The client's screen model (xenconsole/vt.py): text, wrap, scroll, escapes, UTF-8, resize."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xenconsole.vt import Screen


def test_screen_text_wrap_scroll_and_controls() -> None:
    s = Screen(10, 3)
    s.feed_bytes(b"hello world\r\nab\bc")
    assert s.display() == ["hello worl", "d", "ac"]
    s.feed_bytes(b"\r\nline3\r\nline4")
    assert s.display() == ["ac", "line3", "line4"]
    assert (s.x, s.y) == (5, 2)


def test_screen_escape_sequences_even_when_split() -> None:
    s = Screen(20, 3)
    s.feed_bytes(b"abcdef\x1b[1;31mX\x1b[0m\x1b[")
    s.feed_bytes(b"3D!\x1b]0;title\x07")
    assert s.display()[0] == "abcd!fX"
    s.feed_bytes(b"\x1b[2;5Hmid\x1b[1;3H\x1b[K\x1b[?25l")
    assert s.display() == ["ab", "    mid", ""]
    s.feed_bytes(b"\x1b[2J")
    assert s.display() == ["", "", ""]


def test_screen_utf8_split_and_resize_keeps_the_cursor_line() -> None:
    s = Screen(10, 4)
    s.feed_bytes("é".encode()[:1])
    s.feed_bytes("é".encode()[1:] + b"\r\n1\r\n2\r\n3")
    assert s.display() == ["é", "1", "2", "3"]
    s.resize(5, 2)
    assert s.display() == ["2", "3"] and (s.x, s.y) == (1, 1)
    s.resize(12, 3)
    assert s.display() == ["2", "3", ""] and s.cols == 12


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"\x1b[", b"\x1b[?1049h", b"\x1b[999;999H", b"\x1b]0;", b"\r\n"]),
            st.tuples(st.integers(1, 120), st.integers(1, 50)),
        ),
        max_size=30,
    )
)
def test_screen_survives_any_bytes_and_resizes(items) -> None:
    s = Screen(80, 24)
    for item in items:
        if isinstance(item, tuple):
            s.resize(*item)
        else:
            s.feed_bytes(item)
        assert len(s.lines) == s.rows and all(len(row) == s.cols for row in s.lines)
        assert 0 <= s.x < s.cols and 0 <= s.y < s.rows
