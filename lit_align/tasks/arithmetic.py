"""A restricted, exact arithmetic parser for untrusted text (model answers).

Accepts only ASCII digits, ``+ - * /``, parentheses and whitespace; evaluates with
``fractions.Fraction`` so division is exact. Never uses ``eval``, ``exec`` or ``ast``. Every
input is bounded up front (length, nesting depth, number of literals) and every intermediate
value is checked (magnitude, denominator), so hostile text costs at most a millisecond or so.
Unary operators are rejected: each literal is a plain digit run.
"""

from __future__ import annotations

from fractions import Fraction

# Bounds for untrusted answers; generous for 3-6 numbers below 1000, tiny for an attacker.
MAX_ANSWER_CHARS = 200
MAX_DEPTH = 20
MAX_LITERALS = 10
MAX_MAGNITUDE = 10**12

_DIGITS = "0123456789"  # spelled out: str.isdigit() would also accept '٣' or '３'
_OPERATORS = "+-*/"
_SPACE = " \t\r\n"


def _tokenize(text: str) -> list:
    """Split into ints and one-character operator/paren strings; reject anything else."""
    tokens: list = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _DIGITS:
            j = i
            while j < len(text) and text[j] in _DIGITS:
                j += 1
            tokens.append(int(text[i:j]))  # at most MAX_ANSWER_CHARS digits, so cheap
            i = j
        elif ch in _OPERATORS or ch in "()":
            tokens.append(ch)
            i += 1
        elif ch in _SPACE:
            i += 1
        else:
            raise ValueError(f"unexpected character {ch!r} at position {i}")
    return tokens


def _checked(value: Fraction) -> Fraction:
    """Stop runaway growth before it costs time (huge products or denominators)."""
    if abs(value) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise ValueError("intermediate value out of bounds")
    return value


def apply_op(op: str, a: Fraction, b: Fraction) -> Fraction:
    """One exact binary operation."""
    if op == "+":
        return _checked(a + b)
    if op == "-":
        return _checked(a - b)
    if op == "*":
        return _checked(a * b)
    if b == 0:
        raise ValueError("division by zero")
    return _checked(a / b)


class _Parser:
    """Recursive descent over: expr = term (('+'|'-') term)*; term = atom (('*'|'/') atom)*;
    atom = integer | '(' expr ')'. Recursion is bounded by MAX_DEPTH, not by the input."""

    def __init__(self, tokens: list):
        self.tokens, self.pos, self.literals = tokens, 0, []

    def peek(self) -> object:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = apply_op(op, value, self.term(depth))
        return value

    def term(self, depth: int) -> Fraction:
        value = self.atom(depth)
        while self.peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = apply_op(op, value, self.atom(depth))
        return value

    def atom(self, depth: int) -> Fraction:
        token = self.peek()
        self.pos += 1
        if isinstance(token, int):
            self.literals.append(token)
            return _checked(Fraction(token))
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ValueError(f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expr(depth + 1)
            if self.peek() != ")":
                raise ValueError("missing ')'")
            self.pos += 1
            return value
        raise ValueError("expected a number or '('" if token is None else f"unexpected {token!r}")


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Evaluate an arithmetic answer exactly.

    Returns the value and the integer literals in order of appearance. Raises ``ValueError``
    with the reason for anything outside the grammar or the bounds (length, depth, literal
    count, magnitude), including division by zero.
    """
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise ValueError("empty expression")
    if sum(isinstance(t, int) for t in tokens) > MAX_LITERALS:
        raise ValueError(f"more than {MAX_LITERALS} numbers")
    parser = _Parser(tokens)
    value = parser.expr(0)
    if parser.pos != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.pos]!r} after the expression")
    return value, parser.literals
