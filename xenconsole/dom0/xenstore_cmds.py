"""dom0's `xenstore-ls`, `xenstore-read`, `xenstore-write` (tools/xs-clients/xenstore_client.c)
over the machine's xenstored (emu/pv/xenstored.py). dom0 is privileged: every path is
reachable; relative paths are under /local/domain/0, as for any xenstored client.
"""

from __future__ import annotations

MAX_WIDTH = 80  # xenstore_client.c:265 (a serial line reports no window size)
TAG = ' = "..."'


def _store(sh):
    pv = getattr(sh.machine, "pv", None)
    return None if pv is None else pv.xenstore


def _abs(path: str) -> str:
    return path if path.startswith("/") else f"/local/domain/0/{path}"


def sanitise(value: str) -> str:
    """sanitise_value(): backslash and non-printable bytes escaped."""
    out = []
    for c in value:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0x20 <= o < 0x7F:
            out.append(c)
        else:
            out.append(f"\\x{o:02x}" if o > 0x7F or o < 0x20 else c)
    return "".join(out)


def _no_store(sh, prog: str) -> int:
    sh.println(f"{prog}: xs_open: No such file or directory")
    return 1


def xenstore_read(sh, args: list[str]) -> int:
    xs = _store(sh)
    if xs is None:
        return _no_store(sh, "xenstore-read")
    prefix = "-p" in args
    keys = [a for a in args if a != "-p"]
    if not keys or any(k.startswith("-") for k in keys):
        sh.println("xenstore-read: Usage: xenstore-read [-h] [-p] [-R] key [...]")
        return 1
    for k in keys:
        try:
            value = xs.read(_abs(k))
        except Exception:
            sh.println(f"xenstore-read: couldn't read path {k}")
            return 1
        sh.println((f"{k}: " if prefix else "") + sanitise(value))
    return 0


def xenstore_write(sh, args: list[str]) -> int:
    xs = _store(sh)
    if xs is None:
        return _no_store(sh, "xenstore-write")
    if not args or len(args) % 2 or any(a.startswith("-") for a in args[::2]):
        sh.println("xenstore-write: Usage: xenstore-write [-h] [-R] key value [...]")
        return 1
    for k, v in zip(args[::2], args[1::2], strict=True):
        xs.write(_abs(k), v)
    return 0


def xenstore_ls(sh, args: list[str]) -> int:
    xs = _store(sh)
    if xs is None:
        return _no_store(sh, "xenstore-ls")
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sh.println("xenstore-ls: Usage: xenstore-ls [-h] [-f] [-p] [path]")
        return 1
    path = _abs(args[0]) if args else "/"
    try:
        xs.directory(path)
    except Exception:
        sh.println(f"xenstore-ls: xs_directory ({path}): No such file or directory")
        return 1
    _ls(sh, xs, path, 0)
    return 0


def _ls(sh, xs, path: str, depth: int) -> None:
    """do_ls(): indented names with their values, truncated to the width."""
    try:
        names = xs.directory(path)
    except Exception:
        return  # a node gone while recursing: silently move on
    for name in names:
        full = path.rstrip("/") + "/" + name
        line = " " * depth + name[: max(0, MAX_WIDTH - len(TAG) - depth)]
        try:
            value = sanitise(xs.read(full))
        except Exception:
            line += ":"
        else:
            if MAX_WIDTH < len(line) + len(value) + len(TAG):
                line += f' = "{value[: max(0, MAX_WIDTH - len(TAG) - len(line))]}\\..."'
            else:
                line += f' = "{value}"'
        sh.println(line)
        _ls(sh, xs, full, depth + 1)


COMMANDS = {"xenstore-ls": xenstore_ls, "xenstore-read": xenstore_read}
COMMANDS["xenstore-write"] = xenstore_write
