"""An inotify watch (Linux, through libc): did anything open, read or list a path? The
check the security tests use instead of strace; atime can be off (noatime) and is not
updated for an open that reads nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_ACCESS = 0x001
IN_OPEN = 0x020
IN_CLOSE_NOWRITE = 0x010
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Watch:
    """Events on each watched path (a file, or a directory: its listing and its entries)."""

    def __init__(self, *paths: str) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths: dict[int, str] = {}
        for p in paths:
            mask = IN_ACCESS | IN_OPEN | IN_CLOSE_NOWRITE
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(p), mask)
            if wd < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch", p)
            self.paths[wd] = p

    def events(self) -> list[tuple[str, int, str]]:
        """(watched path, mask, entry name) of everything seen since the last call."""
        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                wd, mask, _cookie, n = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16 : i + 16 + n].rstrip(b"\0").decode()
                out.append((self.paths.get(wd, "?"), mask, name))
                i += 16 + n

    def close(self) -> None:
        os.close(self.fd)
