"""Splitting a line on a separator outside quotes: shared by the shell and xl's config parser."""

from __future__ import annotations


def split_unquoted(text: str, sep: str = ";", comment: str | None = None) -> tuple[list[str], bool]:
    """`text` split on `sep` outside '...' and "..."; a `comment` character outside quotes
    ends the line. Returns the parts and whether a quote was left open."""
    parts, cur, quote = [], [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == comment:
            break
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts, quote is not None
