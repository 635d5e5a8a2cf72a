"""The dom0 shell's file builtins, `ls`, `cat`, `cd`, `pwd`, over dom0's own filesystem
(xenconsole/dom0/fs.py), with coreutils' and bash's messages and exit statuses."""

from __future__ import annotations

from xenconsole.dom0.fs import HOME, FsError

CAT_MAX = 1 << 20  # bytes `cat` shows of one file
LS_WIDTH = 80


def _flags(sh, cmd: str, args: list[str], allowed: str) -> tuple[set[str], list[str]] | int:
    flags: set[str] = set()
    rest = []
    for a in args:
        if a.startswith("-") and a != "-" and not rest:
            for ch in a[1:]:
                if ch not in allowed:
                    sh.eprintln(f"{cmd}: invalid option -- '{ch}'")
                    sh.eprintln(f"Try '{cmd} --help' for more information.")
                    return 2 if cmd == "ls" else 1
                flags.add(ch)
        else:
            rest.append(a)
    return flags, rest


def _columns(names: list[str]) -> str:
    """ls's vertical columns for an 80-column tty (one per line when they do not fit)."""
    if not names:
        return ""
    for rows in range(1, len(names) + 1):
        cols = [names[i : i + rows] for i in range(0, len(names), rows)]
        widths = [max(len(n) for n in col) + 2 for col in cols]
        if sum(widths) - 2 <= LS_WIDTH:
            lines = []
            for r in range(rows):
                cells = [
                    col[r].ljust(w) for col, w in zip(cols, widths, strict=False) if r < len(col)
                ]
                lines.append("".join(cells).rstrip())
            return "\n".join(lines) + "\n"
    return "\n".join(names) + "\n"


def ls(sh, args: list[str]) -> int:
    parsed = _flags(sh, "ls", args, "1a")
    if isinstance(parsed, int):
        return parsed
    flags, paths = parsed
    status = 0
    files, dirs = [], []
    for p in paths or ["."]:
        try:
            entries = sh.fs.listing(p, sh.cwd)
        except FsError as e:
            sh.eprintln(f"ls: cannot access '{p}': {e.strerror}")
            status = 2
            continue
        (files if entries is None else dirs).append((p, entries))
    out = []
    if files:
        out.append(_show(sorted(p for p, _ in files), "1" in flags))
    for i, (p, entries) in enumerate(dirs):
        names = entries if "a" not in flags else [".", ".."] + entries
        names = [n for n in names if "a" in flags or not n.startswith(".")]
        if len(paths) > 1:
            out.append(("\n" if out or i else "") + f"{p}:\n")
        out.append(_show(names, "1" in flags))
    sh.write("".join(out))
    return status


def _show(names: list[str], one: bool) -> str:
    return "".join(n + "\n" for n in names) if one else _columns(names)


def cat(sh, args: list[str]) -> int:
    status = 0
    for p in args:
        try:
            data = sh.fs.read(p, sh.cwd, CAT_MAX)
        except FsError as e:
            sh.eprintln(f"cat: {p}: {e.strerror}")
            status = 1
            continue
        sh.write(data.decode("utf-8", "replace"))
    return status


def cd(sh, args: list[str]) -> int:
    if len(args) > 1:
        sh.eprintln("-bash: cd: too many arguments")
        return 1
    target = args[0] if args else HOME
    if target == "~" or target.startswith("~/"):
        target = HOME + target[1:]
    try:
        sh.cwd = sh.fs.directory(target, sh.cwd)
    except FsError as e:
        sh.eprintln(f"-bash: cd: {target}: {e.strerror}")
        return 1
    return 0


def pwd(sh, args: list[str]) -> int:
    sh.println(sh.cwd)
    return 0
