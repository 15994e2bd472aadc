"""POSIX extended regular expressions (ERE), as the classic tools' backup groups use them.

``backup-groups.conf`` holds UNIX regular expressions: ``grep -E`` syntax, matched
against the whole user ID.  Python's ``re`` reads some of them differently
(``[[:alpha:]]`` is a nested set there, matching nobody) and backtracks, so an
expression such as ``(a+)+b`` can take exponential time on a long user ID.  This
module therefore parses the POSIX syntax itself and matches with an automaton:

* parse: ordinary characters, ``.``, bracket expressions with ranges, character
  classes (``[:alpha:]`` ... in the POSIX locale, i.e. ASCII), single-character
  equivalence classes and collating symbols (``[=a=]``, ``[.-.]``), anchors ``^ $``,
  ``* + ?``, intervals ``{m}`` ``{m,}`` ``{m,n}`` (at most 255), alternation and
  groups; ``\\`` before a special character makes it literal.  What POSIX leaves
  undefined or other dialects add is refused with the reason: back-references, ``\\d``
  and friends, a repetition with nothing to repeat or of a repetition (``a**``),
  multi-character collating elements, an unknown class.
* match: a Thompson NFA simulated as a lazily built DFA.  Every expression matches in
  time linear in the length of the user ID (times the size of the expression): there
  is no backtracking, so no expression can hang a backup.  Expressions whose
  repetitions spell out more than :data:`MAX_STATES` states are refused.

:func:`to_python` gives the equivalent Python ``re`` text (for diagnostics and for
tests that compare the two).
"""
from __future__ import annotations

import re

RE_DUP_MAX = 255            # POSIX's minimum RE_DUP_MAX, what every grep accepts
MAX_STATES = 20000          # NFA states once repetitions are spelled out
MAX_DFA = 4096              # cached DFA states before the cache starts over

_SPECIAL = set(".[]\\()*+?{}|^$")

#: Character classes of the POSIX ("C") locale, as code point ranges.
CLASSES = {
    "alpha": ((65, 90), (97, 122)),
    "digit": ((48, 57),),
    "alnum": ((48, 57), (65, 90), (97, 122)),
    "upper": ((65, 90),),
    "lower": ((97, 122),),
    "space": ((9, 13), (32, 32)),
    "blank": ((9, 9), (32, 32)),
    "punct": ((33, 47), (58, 64), (91, 96), (123, 126)),
    "print": ((32, 126),),
    "graph": ((33, 126),),
    "cntrl": ((0, 31), (127, 127)),
    "xdigit": ((48, 57), (65, 70), (97, 102)),
}

_HINTS = {
    "d": "[[:digit:]]", "D": "[^[:digit:]]", "w": "[[:alnum:]_]", "W": "[^[:alnum:]_]",
    "s": "[[:space:]]", "S": "[^[:space:]]",
}


class EreError(ValueError):
    """An expression that is not POSIX ERE, or that cannot be matched as one."""

    def __init__(self, why: str, pos: int | None = None):
        self.why = why
        self.pos = pos
        super().__init__(why if pos is None else f"{why} (at character {pos + 1})")


# -- parsing ------------------------------------------------------------------------
# The tree: ("set", negated, ranges) | ("cat", [n...]) | ("alt", [n...])
#           | ("rep", n, min, max or None) | ("bol",) | ("eol",) | ("empty",)

class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def parse(self):
        node = self.ere()
        if self.i < len(self.s):            # only an unbalanced ')' stops ere() early
            raise EreError("unmatched ')'", self.i)
        return node

    def ere(self):
        branches = [self.branch()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.branch())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def branch(self):
        items = []
        while True:
            c = self.peek()
            if c is None or c in "|)":
                break
            atom = self.atom()
            atom = self.quantified(atom)
            items.append(atom)
        if not items:
            return ("empty",)
        return items[0] if len(items) == 1 else ("cat", items)

    def quantified(self, atom):
        q = self.quantifier()
        if q is None:
            return atom
        if atom[0] in ("bol", "eol"):
            raise EreError(f"'{self.s[self.qstart]}' repeats an anchor ('^' or '$'), which "
                           f"POSIX leaves undefined", self.qstart)
        lo, hi = q
        if self.quantifier_ahead():
            raise EreError("a repetition of a repetition (like a** or a+?) is undefined in POSIX; "
                           "write one repetition", self.i)
        return ("rep", atom, lo, hi)

    def quantifier_ahead(self) -> bool:
        c = self.peek()
        return c in ("*", "+", "?") or (c == "{" and self._interval_at(self.i) is not None)

    def quantifier(self):
        c = self.peek()
        self.qstart = self.i
        if c == "*":
            self.i += 1
            return 0, None
        if c == "+":
            self.i += 1
            return 1, None
        if c == "?":
            self.i += 1
            return 0, 1
        if c == "{":
            got = self._interval_at(self.i)
            if got is None:
                raise EreError("'{' starts a repetition count such as {2} or {1,3}; write \\{ "
                               "for a brace", self.i)
            lo, hi, end = got
            if hi is not None and lo > hi:
                raise EreError(f"bad repetition count {{{lo},{hi}}}: the first number is larger", self.i)
            if lo > RE_DUP_MAX or (hi is not None and hi > RE_DUP_MAX):
                raise EreError(f"repetition count above {RE_DUP_MAX}", self.i)
            self.i = end
            return lo, hi
        return None

    _INTERVAL = re.compile(r"\{([0-9]*)(,([0-9]*))?\}")

    def _interval_at(self, i):
        m = self._INTERVAL.match(self.s, i)
        if not m or (m.group(1) == "" and not m.group(2)):
            return None
        if len(m.group(1)) > 6 or len(m.group(3) or "") > 6:
            return RE_DUP_MAX + 1, None, m.end()
        lo = int(m.group(1) or 0)
        if m.group(2) is None:
            return lo, lo, m.end()
        return lo, (int(m.group(3)) if m.group(3) else None), m.end()

    def atom(self):
        c = self.peek()
        start = self.i
        if c in ("*", "+", "?") or (c == "{" and self._interval_at(self.i) is not None):
            raise EreError(f"'{c}' has nothing to repeat", start)
        self.i += 1
        if c == "(":
            if self.peek() == "?":
                raise EreError("'(?' is Python/Perl syntax, not POSIX", start)
            inner = self.ere()
            if self.peek() != ")":
                raise EreError("'(' is not closed", start)
            self.i += 1
            return inner
        if c == ".":
            return ("set", True, ())
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == "[":
            return self.bracket(start)
        if c == "{":
            raise EreError("'{' starts a repetition count such as {2} or {1,3}; write \\{ for a brace",
                           start)
        if c == "\\":
            if self.i >= len(self.s):
                raise EreError("a trailing '\\' escapes nothing", start)
            e = self.s[self.i]
            self.i += 1
            if e in _SPECIAL:
                return ("set", False, ((ord(e), ord(e)),))
            if e.isdigit():
                raise EreError(f"back-references (\\{e}) are not part of POSIX extended "
                               f"expressions", start)
            hint = _HINTS.get(e)
            raise EreError(f"'\\{e}' is not POSIX" + (f"; write {hint}" if hint else
                           "; '\\' only makes a special character (.[]\\()*+?{}|^$) literal"), start)
        return ("set", False, ((ord(c), ord(c)),))

    def bracket(self, start):
        s = self.s
        negated = False
        if self.peek() == "^":
            negated = True
            self.i += 1
        ranges = []
        first = True
        while True:
            if self.i >= len(s):
                raise EreError("'[' is not closed", start)
            c = s[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if s.startswith("[:", self.i):
                end = s.find(":]", self.i + 2)
                if end < 0:
                    raise EreError("'[:' is not closed by ':]'", self.i)
                name = s[self.i + 2:end]
                if name not in CLASSES:
                    raise EreError(f"unknown character class [:{name}:] (known: "
                                   f"{', '.join(sorted(CLASSES))})", self.i)
                ranges.extend(CLASSES[name])
                self.i = end + 2
                if self.peek() == "-" and self.i + 1 < len(s) and s[self.i + 1] != "]":
                    raise EreError("a character class cannot start a range", self.i)
                continue
            lo = self._bracket_char()
            if self.peek() == "-" and self.i + 1 < len(s) and s[self.i + 1] != "]":
                self.i += 1
                if s.startswith("[:", self.i):
                    raise EreError("a character class cannot end a range", self.i)
                at = self.i
                hi = self._bracket_char()
                if ord(hi) < ord(lo):
                    raise EreError(f"bad range {lo}-{hi}: its end comes before its start", at)
                ranges.append((ord(lo), ord(hi)))
                if self.peek() == "-" and self.i + 1 < len(s) and s[self.i + 1] != "]":
                    # [a-c-e]: GNU grep -E and regcomp say "Invalid range end"; read as
                    # a-c, '-', e it matched what grep's users do not expect
                    raise EreError(f"'-' after the range {lo}-{hi} starts no range: write it last "
                                   f"([...-]) to mean the character '-'", self.i)
            else:
                ranges.append((ord(lo), ord(lo)))
        return ("set", negated, tuple(ranges))

    def _bracket_char(self) -> str:
        s = self.s
        for open_, close, what in (("[.", ".]", "collating element"), ("[=", "=]", "equivalence class")):
            if s.startswith(open_, self.i):
                end = s.find(close, self.i + 2)
                if end < 0:
                    raise EreError(f"'{open_}' is not closed by '{close}'", self.i)
                name = s[self.i + 2:end]
                if len(name) != 1:
                    raise EreError(f"the {what} {open_}{name}{close} cannot be translated: only "
                                   f"single characters are (in the POSIX locale each stands for "
                                   f"itself)", self.i)
                self.i = end + 2
                return name
        c = s[self.i]
        self.i += 1
        return c                             # '\\' is literal inside brackets in POSIX


def parse(text: str):
    """The expression's tree; EreError (with the reason and position) when it is not
    POSIX ERE."""
    return _Parser(text).parse()


# -- the automaton --------------------------------------------------------------------

_CHAR, _SPLIT, _BOL, _EOL, _MATCH = range(5)


class _Nfa:
    def __init__(self):
        self.kind: list[int] = []
        self.arg: list = []        # _CHAR: (negated, ranges); _SPLIT: None
        self.out: list[list] = []  # successor state ids

    def add(self, kind, arg=None) -> int:
        if len(self.kind) >= MAX_STATES:
            raise EreError(f"the expression is too large once its repetitions are spelled out "
                           f"(more than {MAX_STATES} states): use smaller counts")
        self.kind.append(kind)
        self.arg.append(arg)
        self.out.append([])
        return len(self.kind) - 1

    # a fragment is (start state, [dangling (state) whose out list gets the next start])
    def build(self, node):
        t = node[0]
        if t == "set":
            s = self.add(_CHAR, (node[1], node[2]))
            return s, [s]
        if t in ("bol", "eol"):
            s = self.add(_BOL if t == "bol" else _EOL)
            return s, [s]
        if t == "empty":
            s = self.add(_SPLIT)
            return s, [s]
        if t == "cat":
            start, ends = self.build(node[1][0])
            for n in node[1][1:]:
                s, e = self.build(n)
                self.patch(ends, s)
                ends = e
            return start, ends
        if t == "alt":
            split = self.add(_SPLIT)
            ends = []
            for n in node[1]:
                s, e = self.build(n)
                self.out[split].append(s)
                ends += e
            return split, ends
        if t == "rep":
            _, inner, lo, hi = node
            pieces = [self.build(inner) for _ in range(lo)]
            if hi is None:                   # the last piece loops
                loop = self.add(_SPLIT)
                s, e = self.build(inner)
                self.out[loop].append(s)
                self.patch(e, loop)
                pieces.append((loop, [loop]))
            else:                            # x{0,k} as (x(x(x)?)?)?: nested, never ambiguous
                first, splits, ends = None, [], None
                for _ in range(hi - lo):
                    split = self.add(_SPLIT)
                    s, e = self.build(inner)
                    self.out[split].append(s)
                    if ends is None:
                        first = split
                    else:
                        self.patch(ends, split)
                    splits.append(split)
                    ends = e
                if first is not None:
                    pieces.append((first, splits + ends))
            if not pieces:
                s = self.add(_SPLIT)
                return s, [s]
            start, ends = pieces[0]
            for s, e in pieces[1:]:
                self.patch(ends, s)
                ends = e
            return start, ends
        raise AssertionError(t)

    def patch(self, ends, target) -> None:
        for s in ends:
            self.out[s].append(target)


class Pattern:
    """A compiled ERE: :meth:`fullmatch` tells whether it matches a whole string."""

    def __init__(self, text: str):
        self.text = text
        self.tree = parse(text)
        nfa = _Nfa()
        start, ends = nfa.build(self.tree)
        match = nfa.add(_MATCH)
        nfa.patch(ends, match)
        self._kind, self._arg, self._out = nfa.kind, nfa.arg, nfa.out
        self._match = match
        self._reset()
        self._start_set = self._closure([start], bol=True, eol=False)
        self._start_mid = self._state(self._start_set)
        self._start_end = self._closure([start], bol=True, eol=True)

    def _reset(self) -> None:
        self._ids: dict[frozenset, int] = {}
        self._sets: list[frozenset] = []
        self._trans: list[dict] = []
        self._accept: list = []

    def _state(self, states: frozenset) -> int:
        i = self._ids.get(states)
        if i is None:
            i = self._ids[states] = len(self._sets)
            self._sets.append(states)
            self._trans.append({})
            self._accept.append(None)
        return i

    def _closure(self, seeds, bol: bool, eol: bool) -> frozenset:
        kind, out = self._kind, self._out
        seen = set()
        stack = list(seeds)
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            k = kind[s]
            if k == _SPLIT or (k == _BOL and bol) or (k == _EOL and eol):
                stack.extend(out[s])
        return frozenset(seen)

    def _step(self, states: frozenset, ch: str) -> frozenset:
        o = ord(ch)
        nxt = []
        for s in states:
            if self._kind[s] == _CHAR:
                negated, ranges = self._arg[s]
                hit = False
                for lo, hi in ranges:
                    if lo <= o <= hi:
                        hit = True
                        break
                if hit != negated:
                    nxt.extend(self._out[s])
        return self._closure(nxt, bol=False, eol=False)

    def fullmatch(self, text: str) -> bool:
        if not text:
            return self._match in self._start_end
        cur = self._start_mid
        for ch in text:
            trans = self._trans[cur]
            nxt = trans.get(ch)
            if nxt is None:
                states = self._step(self._sets[cur], ch)
                if len(self._sets) >= MAX_DFA:       # bounded memory: start the cache over
                    keep = self._sets[cur]
                    self._reset()
                    self._start_mid = self._state(self._start_set)
                    cur = self._state(keep)
                    trans = self._trans[cur]
                nxt = trans[ch] = self._state(states)
            cur = nxt
            if not self._sets[cur]:
                return False
        acc = self._accept[cur]
        if acc is None:
            acc = self._accept[cur] = self._match in self._closure(self._sets[cur], bol=False, eol=True)
        return acc

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def compile(text: str) -> Pattern:
    """A :class:`Pattern`; EreError when ``text`` is not POSIX ERE or is too large."""
    return Pattern(text)


# -- the same expression in Python's re ----------------------------------------------

def _py_set(negated: bool, ranges) -> str:
    if negated and not ranges:
        return "."
    if not negated and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return re.escape(chr(ranges[0][0]))
    parts = []
    for lo, hi in sorted(set(ranges)):
        parts.append(_esc_in_set(lo) if lo == hi else f"{_esc_in_set(lo)}-{_esc_in_set(hi)}")
    return "[" + ("^" if negated else "") + "".join(parts) + "]"


def _esc_in_set(o: int) -> str:
    c = chr(o)
    if c in "\\]^-[":
        return "\\" + c
    if o < 32 or o == 127:
        return "\\x%02x" % o
    return c


def _py(node) -> str:
    t = node[0]
    if t == "set":
        return _py_set(node[1], node[2])
    if t == "bol":
        return "^"
    if t == "eol":
        return r"\Z"
    if t == "empty":
        return ""
    if t == "cat":
        return "".join(_py(n) for n in node[1])
    if t == "alt":
        return "(?:" + "|".join(_py(n) for n in node[1]) + ")"
    if t == "rep":
        _, inner, lo, hi = node
        q = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((lo, hi))
        if q is None:
            q = f"{{{lo}}}" if lo == hi else f"{{{lo},{'' if hi is None else hi}}}"
        return f"(?:{_py(inner)}){q}"
    raise AssertionError(t)


def to_python(text: str) -> str:
    """The Python ``re`` text matching what ``text`` matches as POSIX ERE (use with
    re.DOTALL and fullmatch).  Python's engine backtracks: this is for reading and for
    tests, not for matching untrusted expressions."""
    return _py(parse(text))
