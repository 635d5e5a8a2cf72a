"""dom0's own filesystem: one host directory that every path dom0 or `xl` reads is resolved in.

Paths are dom0's: `/` is the directory's top, a relative path starts at the shell's working
directory (`/root` at first). Resolution walks one component at a time from an open
descriptor of the top (`openat`-style, every open with O_NOFOLLOW), so the kernel never
follows a link or a `..` on our behalf:
- `..` is taken lexically, from the descriptors already opened; one above `/` is refused;
- a symbolic link is read (`readlink` relative to its directory) and its target walked the
  same way: a relative target stays confined by the rule above, an absolute one (written on
  the host, meaning a host path) is refused;
- the last component is opened O_NOFOLLOW | O_NONBLOCK: a link swapped in meanwhile fails,
  a FIFO does not block, and anything but a regular file is refused before a read.
Nothing outside the top is opened, stat'ed or read; a refusal is decided from what is inside
only, and is one `Permission denied` (EACCES) whatever exists on the host, so an error never
tells whether a host path exists.

`Dom0Fs.private()` is the server's default: a fresh 0700 directory, filled from the skeleton
xenconsole/dom0/skel/ (the README's example programs and configs in /root, xl's example
configs in /etc/xen), removed by `close()`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

MAX_LINKS = 40  # Linux's MAXSYMLINKS
MAX_FILE = 64 << 20  # the largest file read or uploaded (a PV kernel is read up to 64 MiB)
HOME = "/root"
SKEL = Path(__file__).with_name("skel")


class FsError(OSError):
    """A dom0 path cannot be used; `strerror` is the one thing shown."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))


def refused() -> FsError:
    return FsError(errno.EACCES)


def split(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def join(names: list[str]) -> str:
    return "/" + "/".join(names)


class Dom0Fs:
    """The directory `root` as dom0's `/`."""

    def __init__(self, root: str, owned: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.owned = owned  # remove the whole tree at close()
        st = os.stat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)

    @classmethod
    def private(cls) -> Dom0Fs:
        """A fresh private root (0700) holding a copy of the skeleton (/root, /etc/xen)."""
        top = tempfile.mkdtemp(prefix="xenconsole-dom0-")
        fs = cls(top, owned=True)
        ignore = shutil.ignore_patterns("__pycache__")
        for entry in SKEL.iterdir():  # the top itself keeps mkdtemp's 0700
            shutil.copytree(entry, os.path.join(top, entry.name), ignore=ignore)
        return fs

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
            self.owned = False

    # ---- resolution ---------------------------------------------------------------------

    def _walk(self, path: str, cwd: str, last_dir: bool, create_dirs: bool = False):
        """(dirfd, name, names): the open directory holding the last component, its name
        ("" when the path is dom0's `/` or `last_dir` walked into it) and the dom0 path.
        The caller closes dirfd."""
        if not path:
            raise FsError(errno.ENOENT)
        todo = split(path) if path.startswith("/") else split(cwd) + split(path)
        stack = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        names: list[str] = []
        links = 0
        try:
            while todo:
                c = todo.pop(0)
                if c == "..":
                    if len(stack) == 1:
                        raise refused()
                    os.close(stack.pop())
                    names.pop()
                    continue
                try:
                    st = os.stat(c, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if not create_dirs:
                        raise
                    if not todo and not last_dir:  # the file itself: the caller creates it
                        return stack.pop(), c, join(names + [c])
                    os.mkdir(c, 0o755, dir_fd=stack[-1])
                    st = os.stat(c, dir_fd=stack[-1], follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_LINKS:
                        raise FsError(errno.ELOOP)
                    target = os.readlink(c, dir_fd=stack[-1])
                    if target.startswith("/"):
                        raise refused()
                    todo[:0] = split(target)
                    continue
                if not todo and not last_dir:
                    return stack.pop(), c, join(names + [c])
                if not stat.S_ISDIR(st.st_mode):
                    raise FsError(errno.ENOTDIR)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                stack.append(os.open(c, flags, dir_fd=stack[-1]))
                names.append(c)
            return stack.pop(), "", join(names)
        except FsError:
            raise
        except OSError as e:
            raise FsError(e.errno or errno.EIO) from None
        finally:
            for fd in stack:
                os.close(fd)

    def _open(self, path: str, cwd: str, flags: int, mode: int = 0o644) -> tuple[int, str]:
        create = bool(flags & os.O_CREAT)
        dirfd, name, where = self._walk(path, cwd, last_dir=False, create_dirs=create)
        try:
            if not name:
                raise FsError(errno.EISDIR)
            flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            try:
                return os.open(name, flags, mode, dir_fd=dirfd), where
            except OSError as e:
                # ELOOP: a link put there since the walk looked.
                raise FsError(errno.EACCES if e.errno == errno.ELOOP else e.errno) from None
        finally:
            os.close(dirfd)

    # ---- operations ---------------------------------------------------------------------

    def read(self, path: str, cwd: str = HOME, max_bytes: int = MAX_FILE) -> bytes:
        """A regular file's bytes (at most `max_bytes`: EFBIG beyond); FsError."""
        fd, _ = self._open(path, cwd, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise FsError(errno.EISDIR)
            if not stat.S_ISREG(st.st_mode):
                raise FsError(errno.EINVAL)
            if st.st_size > max_bytes:
                raise FsError(errno.EFBIG)
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > max_bytes:
            raise FsError(errno.EFBIG)
        return data

    def directory(self, path: str, cwd: str = HOME) -> str:
        """The dom0 path of directory `path` (for `cd`); FsError."""
        dirfd, _, where = self._walk(path, cwd, last_dir=True)
        os.close(dirfd)
        return where

    def listing(self, path: str, cwd: str = HOME) -> list[str] | None:
        """Sorted names in directory `path`, or None when it is a file; FsError."""
        dirfd, name, _ = self._walk(path, cwd, last_dir=False)
        try:
            if name:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    return None
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            else:
                fd = os.dup(dirfd)
            try:
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)
        except FsError:
            raise
        except OSError as e:
            raise FsError(e.errno or errno.EIO) from None
        finally:
            os.close(dirfd)

    def write(
        self, path: str, data: bytes, offset: int = 0, mode: int = 0o644, cwd: str = HOME
    ) -> str:
        """Write `data` at `offset` of regular file `path` (offset 0 truncates; missing
        directories are made); its dom0 path. FsError."""
        if offset + len(data) > MAX_FILE:
            raise FsError(errno.EFBIG)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if offset == 0 else 0)
        fd, where = self._open(path, cwd, flags, mode & 0o755)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FsError(errno.EINVAL)
            os.pwrite(fd, data, offset)
        except FsError:
            raise
        except OSError as e:
            raise FsError(e.errno or errno.EIO) from None
        finally:
            os.close(fd)
        return where

    def host_path(self, path: str, cwd: str = HOME) -> str:
        """The host path of regular file `path` once its walk is checked (for a reader that
        opens by name; the dom0 root is the operator's, so nothing swaps links in it)."""
        fd, where = self._open(path, cwd, os.O_RDONLY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FsError(errno.EINVAL)
        finally:
            os.close(fd)
        return os.path.join(self.root, where.lstrip("/"))
