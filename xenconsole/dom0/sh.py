"""The dom0 shell's language: what a POSIX shell wrapper such as labgrid's ShellDriver needs.

Lists (`;`, `&&`, `||`), groups (`{ ...; }`), function definitions (`run() { ...; }`),
variables (`NAME=value`, a prefix assignment for one command, `$NAME`, `${NAME}`, `$?`,
`$@`, `$#`, `$1`...), quoting ('...', "...", backslash), `sh -c 'CMD' [NAME ARGS...]`,
`export`, `unset`, `:`. Commands themselves are the dom0 shell's (xenconsole/dom0/shell.py
`dispatch_argv`). No pipes, redirections, globbing or command substitution: they are
refused with one line, as bash refuses a syntax error.

A line goes here when it needs any of this (`wants`); other lines keep the shell's own path.
A slow command (`xl create` of an `asm:` guest, a `Pending`) waits off the console's thread
on either path, so every other client is served meanwhile: the interpreter is a generator
that yields the Pending (or FOREGROUND, after `xl console` took the line) and is resumed with
its status when it is done (`run_line` drives it); the rest of the list runs after it, in
order, and Ctrl-C while it waits ends the whole line, as SIGINT does in bash.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
_OPS = ("&&", "||", ";", "(", ")", "|", "&", "<", ">", "\n")
MAX_DEPTH = 64  # function calls and `sh -c` nesting: a runaway recursion ends, as bash's


FOREGROUND = object()  # yielded when a command took the line (`xl console`): resume on Ctrl-]
Run = Generator[Any, int, int]  # yields a Pending or FOREGROUND, is sent a status; its status


class ShSyntaxError(Exception):
    pass


@dataclass
class Word:
    """A word as typed: (text, quote) pieces, quote one of '', "'", '"'."""

    parts: list[tuple[str, str]] = field(default_factory=list)

    def literal(self) -> str | None:
        """The word's text if it has no quotes at all (for `{`, `}`, names), else None."""
        if all(q == "" for _t, q in self.parts):
            return "".join(t for t, _q in self.parts)
        return None


@dataclass
class State:
    vars: dict[str, str] = field(default_factory=dict)
    exported: set[str] = field(default_factory=set)
    functions: dict[str, list] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)
    depth: int = 0
    arg0: str = "-bash"


def state(shell) -> State:
    st = getattr(shell, "sh_state", None)
    if st is None:
        st = shell.sh_state = State()
    return st


# ---- lexing ----------------------------------------------------------------------------


def tokens(text: str) -> list[Word | str]:
    """Words and operator strings; ShSyntaxError for an open quote."""
    out: list[Word | str] = []
    word: Word | None = None
    i, n = 0, len(text)

    def piece(t: str, q: str) -> None:
        nonlocal word
        if word is None:
            word = Word()
        if q == "" and word.parts and word.parts[-1][1] == "":
            word.parts[-1] = (word.parts[-1][0] + t, "")  # `$NAME` must stay one piece
        else:
            word.parts.append((t, q))

    def end() -> None:
        nonlocal word
        if word is not None:
            out.append(word)
            word = None

    while i < n:
        c = text[i]
        if c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise ShSyntaxError("unexpected EOF while looking for matching `''")
            piece(text[i + 1 : j], "'")
            i = j + 1
        elif c == '"':
            buf, i = [], i + 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                    buf.append("\\" + text[i + 1])  # kept escaped for expansion
                    i += 2
                else:
                    buf.append(text[i])
                    i += 1
            if i >= n:
                raise ShSyntaxError("unexpected EOF while looking for matching `\"'")
            piece("".join(buf), '"')
            i += 1
        elif c == "\\" and i + 1 < n:
            piece(text[i + 1], "'")
            i += 2
        elif c in " \t\r":
            end()
            i += 1
        elif c == "#" and word is None:
            break
        else:
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            if op is not None:
                end()
                out.append(op)
                i += len(op)
            else:
                piece(c, "")
                i += 1
    end()
    return out


# ---- parsing ---------------------------------------------------------------------------
# AST: ("list", [(op, node), ...]) where op is None for the first, "&&", "||" or ";";
# ("simple", [assign Words], [Words]); ("group", list); ("func", name, group).


class Parser:
    def __init__(self, toks: list[Word | str]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> Word | str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def is_word(self, lit: str) -> bool:
        t = self.peek()
        return isinstance(t, Word) and t.literal() == lit

    def parse_list(self, until: str | None = None) -> tuple:
        items: list[tuple[str | None, tuple]] = []
        op: str | None = None
        while True:
            while self.peek() in (";", "\n") and not items:
                self.i += 1
            t = self.peek()
            if t is None or (until and self.is_word(until)):
                if op in ("&&", "||"):
                    raise ShSyntaxError("syntax error: unexpected end of file")
                return ("list", items)
            if isinstance(t, str) and t not in ("(",):
                raise ShSyntaxError(f"syntax error near unexpected token `{t}'")
            items.append((op, self.parse_command()))
            t = self.peek()
            if t in ("&&", "||"):
                op = t
                self.i += 1
            elif t in (";", "\n"):
                op = ";"
                self.i += 1
                while self.peek() in (";", "\n"):
                    self.i += 1
            elif t is None or (until and self.is_word(until)):
                op = ";"
            else:
                raise ShSyntaxError(f"syntax error near unexpected token `{_show(t)}'")

    def parse_command(self) -> tuple:
        if self.is_word("{"):
            return self.parse_group()
        t = self.peek()
        nxt = self.toks[self.i + 1 : self.i + 3]
        if isinstance(t, Word) and nxt == ["(", ")"]:
            name = t.literal()
            if name is None or not _NAME.match(name):
                raise ShSyntaxError(f"`{_show(t)}': not a valid identifier")
            self.i += 3
            if not self.is_word("{"):
                raise ShSyntaxError("syntax error: a function body is { ...; }")
            return ("func", name, self.parse_group())
        assigns, words = [], []
        while isinstance(self.peek(), Word):
            w = self.toks[self.i]
            first = w.parts[0]
            if not words and first[1] == "" and _ASSIGN.match(first[0]):
                assigns.append(w)
            else:
                words.append(w)
            self.i += 1
        if not assigns and not words:
            raise ShSyntaxError(f"syntax error near unexpected token `{_show(self.peek())}'")
        return ("simple", assigns, words)

    def parse_group(self) -> tuple:
        self.i += 1  # {
        body = self.parse_list(until="}")
        if not self.is_word("}"):
            raise ShSyntaxError("syntax error: unexpected end of file (no `}')")
        self.i += 1
        if not body[1]:
            raise ShSyntaxError("syntax error near unexpected token `}'")
        return ("group", body)


def _show(t: Word | str | None) -> str:
    if t is None:
        return "newline"
    return t if isinstance(t, str) else "".join(x for x, _q in t.parts)


def parse(text: str) -> tuple:
    toks = tokens(text)
    for t in toks:
        if t in ("|", "&", "<", ">"):
            raise ShSyntaxError(f"{t}: not supported by this shell")
    p = Parser(toks)
    tree = p.parse_list()
    if p.peek() is not None:
        raise ShSyntaxError(f"syntax error near unexpected token `{_show(p.peek())}'")
    return tree


# ---- expansion -------------------------------------------------------------------------

_VAR_NAME = r"[A-Za-z_][A-Za-z0-9_]*|[0-9?#@*$]"
_VAR = re.compile(rf"\$(?:\{{({_VAR_NAME})\}}|({_VAR_NAME}))")


def _lookup(shell, st: State, name: str) -> str | list[str]:
    if name == "?":
        return str(shell.status)
    if name == "#":
        return str(len(st.positional))
    if name == "$":
        return "1"
    if name == "@":
        return list(st.positional)
    if name == "*":
        return " ".join(st.positional)
    if name.isdigit():
        k = int(name)
        if k == 0:
            return st.arg0
        return "" if k > len(st.positional) else st.positional[k - 1]
    return st.vars.get(name, "")


def expand(shell, st: State, word: Word) -> list[str]:
    """A word's fields: "$@" is one field per argument; unquoted expansions are split on
    blanks; quoted text is kept as one field."""
    fields: list[str] = []
    cur: list[str] = []
    have = False  # a quoted empty string still makes a field

    for text, q in word.parts:
        if q == "'":
            cur.append(text)
            have = True
            continue
        pos = 0
        if q == '"':
            have = True
        for m in _VAR.finditer(text):
            cur.append(_unescape(text[pos : m.start()], q))
            value = _lookup(shell, st, m.group(1) or m.group(2))
            if isinstance(value, list):  # $@
                if q == '"':
                    if value:
                        cur.append(value[0])
                        for v in value[1:]:
                            fields.append("".join(cur))
                            cur = [v]
                    continue
                value = " ".join(value)
            if q == '"':
                cur.append(value)
            else:
                parts = value.split()
                if parts:
                    if value[:1].isspace() and (cur or have):
                        fields.append("".join(cur))
                        cur = []
                    cur.append(parts[0])
                    for p in parts[1:]:
                        fields.append("".join(cur))
                        cur = [p]
                    have = True
            pos = m.end()
        rest = text[pos:]
        if rest:
            cur.append(_unescape(rest, q))
            have = True
    if cur or have:
        fields.append("".join(cur))
    return fields


def _unescape(text: str, q: str) -> str:
    return re.sub(r"\\([\"\\$`])", r"\1", text) if q == '"' else text


# ---- running ---------------------------------------------------------------------------


def wants(shell, text: str) -> bool:
    """Whether this line needs the shell language (else the shell's plain path runs it)."""
    if any(s in text for s in ("&&", "||", "{", "()", "${")):
        return True
    if re.search(r"\$[A-Za-z_@#0-9*]", text):
        return True
    st = getattr(shell, "sh_state", None)
    for part in re.split(r"[;\n]", text):
        first = part.strip().split(" ", 1)[0]
        if _ASSIGN.match(first) or first in ("sh", "export", "unset", ":"):
            return True
        if st is not None and first in st.functions:
            return True
    return False


def run_line(shell, text: str) -> bool:
    """Run one line: True when it is done (its status in `shell.status`), False when a
    command of it waits (the shell gives the prompt once the rest of the line has run).
    A syntax error is one line and status 2, as in bash."""
    try:
        tree = parse(text)
    except ShSyntaxError as e:
        shell.println(f"-bash: {e}")
        shell.status = 2
        return True
    return _drive(shell, run_list(shell, state(shell), tree), None)


def _drive(shell, gen: Run, value: int | None) -> bool:
    """Run the line's generator until it ends (True) or waits (False): a Pending goes to a
    worker thread on a running reactor (inline without one), FOREGROUND until Ctrl-]."""
    while True:
        try:
            item = gen.send(value)  # type: ignore[arg-type]  # None starts it
        except StopIteration as stop:
            shell.status = stop.value
            return True
        if item is FOREGROUND:
            shell.after_foreground(lambda: _drive(shell, gen, shell.status))
            return False
        runner = shell.current_runner()
        if runner is None:
            value = shell._run_inline(item)
            continue
        shell.wait_pending(item, runner, lambda status: _drive(shell, gen, status), gen.close)
        return False


def run_list(shell, st: State, node: tuple) -> Run:
    status = shell.status
    for op, cmd in node[1]:
        if op == "&&" and status != 0:
            continue
        if op == "||" and status == 0:
            continue
        status = yield from run_node(shell, st, cmd)
        shell.status = status
    return status


def run_node(shell, st: State, node: tuple) -> Run:
    kind = node[0]
    if kind == "group":
        return (yield from run_list(shell, st, node[1]))
    if kind == "func":
        st.functions[node[1]] = node[2]
        return 0
    return (yield from run_simple(shell, st, node[1], node[2]))


def _assignment(shell, st: State, w: Word) -> tuple[str, str]:
    text0, q0 = w.parts[0]
    m = _ASSIGN.match(text0)
    name = m.group(1)
    rest = Word([(text0[m.end() :], q0), *w.parts[1:]])
    return name, "".join(expand(shell, st, rest))


def run_simple(shell, st: State, assigns: list[Word], words: list[Word]) -> Run:
    values = [_assignment(shell, st, w) for w in assigns]
    argv = [f for w in words for f in expand(shell, st, w)]
    if not argv:
        for name, value in values:
            st.vars[name] = value
        return 0
    saved = {name: st.vars.get(name) for name, _v in values}
    new_exports = {name for name, _v in values} - st.exported
    for name, value in values:  # in this command's environment only (a function's too)
        st.vars[name] = value
    st.exported |= new_exports
    try:  # restored however the command ends: done, or its line given up with Ctrl-C
        return (yield from call(shell, st, argv))
    finally:
        st.exported -= new_exports
        for name, old in saved.items():
            if old is None:
                st.vars.pop(name, None)
            else:
                st.vars[name] = old


def call(shell, st: State, argv: list[str]) -> Run:
    name = argv[0]
    if name in st.functions or name == "sh":
        if st.depth >= MAX_DEPTH:
            shell.println(f"-bash: {name}: maximum nesting level exceeded ({MAX_DEPTH})")
            return 1
        st.depth += 1
        try:
            if name == "sh":
                return (yield from _sh(shell, st, argv[1:]))
            saved, st.positional = st.positional, argv[1:]
            try:
                return (yield from run_list(shell, st, st.functions[name][1]))
            finally:
                st.positional = saved
        finally:
            st.depth -= 1
    if name == ":":
        return 0
    if name == "export":
        for a in argv[1:]:
            key, eq, value = a.partition("=")
            if not _NAME.match(key):
                shell.println(f"-bash: export: `{a}': not a valid identifier")
                return 1
            if eq:
                st.vars[key] = value
            st.exported.add(key)
        return 0
    if name == "unset":
        for a in argv[1:]:
            st.vars.pop(a, None)
            st.functions.pop(a, None)
        return 0
    result = shell.dispatch_argv(argv)  # a status, or a Pending (slow work)
    if not isinstance(result, int):  # the driver runs it (off the reactor) and sends its status
        result = yield result
    if shell.foreground is not None:  # `xl console`: the rest of the line waits for Ctrl-]
        shell.status = result
        yield FOREGROUND
    return result


def _sh(shell, st: State, args: list[str]) -> Run:
    """`sh -c CMD [NAME [ARGS...]]`: CMD in a child shell: the exported variables, no
    functions, `$0` NAME and `$1`... ARGS (the child's variables do not come back)."""
    if not args or args[0] != "-c" or len(args) < 2:
        shell.println("sh: only `sh -c COMMAND [NAME [ARGS...]]` is supported")
        return 2
    try:
        tree = parse(args[1])
    except ShSyntaxError as e:
        shell.println(f"sh: 1: {e}")
        return 2
    child = State(
        vars={k: v for k, v in st.vars.items() if k in st.exported},
        exported=set(st.exported),
        positional=args[3:],
        depth=st.depth,
        arg0=args[2] if len(args) > 2 else "sh",
    )
    return (yield from run_list(shell, child, tree))
