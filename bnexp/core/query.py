"""The ``--where`` query language: a small grammar over a run's record and composed config.

    val_acc > 0.9 and optimizer.lr < 0.5 and norm.kind in ('custom', 'builtin')
    0.01 <= optimizer.lr <= 0.5          (a range: comparisons chain)
    name ~ '^lr-'  and not status == 'failed'
    'paper' in tags

Hand-written recursive descent (no ``eval``; a query can only read values). A query is compiled
once and then evaluated against any mapping of keys to plain values, so it works on record
dicts, on an index, or on a DataFrame row alike. A key a run does not have makes the comparison
that uses it false. Errors are one line pointing at the bad token. Grammar: docs/query.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from bnexp.core.errors import BnexpError

MISSING = object()  # what a lookup returns for a key the run does not have

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|!~|=|<|>|~|\(|\)|\[|\]|,)
  | (?P<name>[A-Za-z_]\w*(?:\.\w+)*)
""", re.VERBOSE)
KEYWORDS = {"and", "or", "not", "in", "between", "true", "false", "null", "none"}
COMPARISONS = {"==", "=", "!=", "<", "<=", ">", ">="}
CONSTANTS = {"true": True, "false": False, "null": None, "none": None}


@dataclass
class Token:
    kind: str  # number, string, op, name, keyword, end
    text: str
    pos: int
    value: Any = None


class QueryError(BnexpError):
    pass


def _error(query: str, token: Token, what: str) -> QueryError:
    shown = "the end" if token.kind == "end" else repr(token.text)
    return QueryError(f"--where {query!r}: {what} at {shown} (column {token.pos + 1}); see docs/query.md")


def tokenize(query: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(query):
        match = _TOKEN.match(query, pos)
        if not match:
            bad = Token("op", query[pos], pos)
            raise _error(query, bad, "unexpected character")
        kind, text = match.lastgroup, match.group()
        if kind == "number":
            tokens.append(Token(kind, text, pos, float(text) if re.search(r"[.eE]", text) else int(text)))
        elif kind == "string":
            body = text[1:-1]
            tokens.append(Token(kind, text, pos, re.sub(r"\\(.)", r"\1", body)))
        elif kind == "name" and text.lower() in KEYWORDS:
            tokens.append(Token("keyword", text.lower(), pos))
        elif kind != "space":
            tokens.append(Token(kind, text, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(query)))
    return tokens


# A compiled query is a tree of closures: node(lookup) -> bool (conditions) or value (operands).
Lookup = Callable[[str], Any]


def _same_kind(a: Any, b: Any) -> bool:
    """Values that can be ordered or tested for equality: numbers with numbers (bools are not
    numbers here: ``norm.sync == 1`` is false), strings with strings, bools with bools."""
    def kind(v):
        return "bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else type(v).__name__
    return kind(a) == kind(b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return False
    if a is None or b is None:
        return (a is b) == (op in ("==", "=")) if op in ("==", "=", "!=") else False
    if not _same_kind(a, b):
        return op == "!="
    if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
        return op == "!="
    if op in ("==", "="):
        return a == b
    if op == "!=":
        return a != b
    if isinstance(a, (bool, list, tuple, dict)):  # no order among these
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _equal(a: Any, b: Any) -> bool:
    return _compare("==", a, b)


class _Parser:
    def __init__(self, query: str):
        self.query = query
        self.tokens = tokenize(query)
        self.i = 0
        self.keys: list[tuple[str, Token]] = []

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, kind: str, text: Optional[str] = None) -> Optional[Token]:
        token = self.token
        if token.kind == kind and (text is None or token.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str, what: str) -> Token:
        token = self.accept(kind, text)
        if token is None:
            raise _error(self.query, self.token, f"expected {what}")
        return token

    def parse(self):
        if self.token.kind == "end":
            raise _error(self.query, self.token, "empty query")
        node = self.or_expr()
        if self.token.kind != "end":
            raise _error(self.query, self.token, "expected 'and', 'or' or the end")
        return node

    def or_expr(self):
        parts = [self.and_expr()]
        while self.accept("keyword", "or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda get: any(p(get) for p in parts))

    def and_expr(self):
        parts = [self.not_expr()]
        while self.accept("keyword", "and"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda get: all(p(get) for p in parts))

    def not_expr(self):
        if self.accept("keyword", "not"):
            inner = self.not_expr()
            return lambda get: not inner(get)
        if self.accept("op", "("):
            node = self.or_expr()
            self.expect("op", ")", "')'")
            return node
        return self.comparison()

    def comparison(self):
        start = self.token
        left = self.operand()
        token = self.token
        if token.kind == "op" and token.text in COMPARISONS:
            operands, ops = [left], []
            while self.token.kind == "op" and self.token.text in COMPARISONS:
                ops.append(self.take().text)
                operands.append(self.operand())
            return lambda get: all(_compare(op, a(get), b(get))
                                   for op, a, b in zip(ops, operands, operands[1:]))
        if token.kind == "op" and token.text in ("~", "!~"):
            self.take()
            pattern_token = self.token
            if pattern_token.kind != "string":
                raise _error(self.query, pattern_token, "expected a quoted regular expression")
            self.take()
            try:
                pattern = re.compile(pattern_token.value)
            except re.error as exc:
                raise _error(self.query, pattern_token, f"bad regular expression ({exc})") from None
            negate = token.text == "!~"

            def matches(get):
                value = left(get)
                if not isinstance(value, str):
                    return False
                return (pattern.search(value) is not None) != negate
            return matches
        negate = bool(token.kind == "keyword" and token.text == "not" and
                      self.tokens[self.i + 1].kind == "keyword" and self.tokens[self.i + 1].text == "in")
        if negate:
            self.take()
        if self.accept("keyword", "in"):
            options = self.value_list()
            return lambda get: self._member(left(get), options(get)) != negate
        if self.accept("keyword", "between"):
            low = self.operand()
            self.expect("keyword", "and", "'and' (between LOW and HIGH)")
            high = self.operand()
            return lambda get: _compare("<=", low(get), left(get)) and _compare("<=", left(get), high(get))
        raise _error(self.query, token if token is not start else self.token,
                     "expected a comparison (== != < <= > >=), 'in', 'between' or '~'")

    @staticmethod
    def _member(value: Any, options: Any) -> bool:
        if value is MISSING or options is MISSING or not isinstance(options, (list, tuple)):
            return False
        return any(_equal(value, option) for option in options)

    def value_list(self):
        if self.token.kind == "op" and self.token.text in ("(", "["):
            close = ")" if self.take().text == "(" else "]"
            items = []
            if not self.accept("op", close):
                while True:
                    items.append(self.operand())
                    if self.accept("op", close):
                        break
                    self.expect("op", ",", f"',' or '{close}'")
                    if self.accept("op", close):  # a trailing comma
                        break
            return lambda get: [item(get) for item in items]
        return self.operand()  # a key holding a list: 'paper' in tags

    def operand(self):
        token = self.token
        if token.kind in ("number", "string"):
            self.take()
            return lambda get, v=token.value: v
        if token.kind == "keyword" and token.text in CONSTANTS:
            self.take()
            return lambda get, v=CONSTANTS[token.text]: v
        if token.kind == "name":
            self.take()
            self.keys.append((token.text, token))
            return lambda get, k=token.text: get(k)
        raise _error(self.query, token, "expected a key, a number or a quoted string")


@dataclass
class Query:
    """A compiled ``--where`` expression: ``query.matches(lookup)`` with ``lookup(key)`` returning a
    value or :data:`MISSING`; ``keys`` are the keys it reads."""

    text: str
    keys: dict[str, Token]
    _test: Callable[[Lookup], bool]

    def matches(self, lookup: Lookup | Mapping[str, Any]) -> bool:
        if isinstance(lookup, Mapping):
            mapping = lookup
            lookup = lambda key: mapping.get(key, MISSING)  # noqa: E731
        return bool(self._test(lookup))

    def check_keys(self, known: Iterable[str]) -> None:
        """A key no run has and bnexp does not know is a typo (or a string without quotes):
        an error naming it, instead of a silently empty selection."""
        import difflib

        known = set(known)
        for key, token in self.keys.items():
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(close)}?" if close else \
                    "quote strings ('custom'); bnexp show RUN lists a run's keys"
                raise _error(self.text, token, f"unknown key {key!r} ({hint})")


def compile_query(text: str) -> Query:
    parser = _Parser(text)
    test = parser.parse()
    return Query(text, dict(parser.keys), test)
