"""Countdown solver: exhaustive, exact search over every ordering and bracketing.

A solution is a tree: a literal, or ``(operator, left, right)``. ``render`` writes a tree with
only the parentheses the left-to-right grammar of ``lit_align.tasks.arithmetic`` needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Union

# A solution tree: a literal, or (operator, left, right).
Node = Union[int, tuple]

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def combine(a: tuple[Fraction, Node], b: tuple[Fraction, Node]) -> Iterator[tuple[Fraction, Node]]:
    """Every value reachable from two operands with one operation, both orders."""
    (x, p), (y, q) = a, b
    yield x + y, ("+", p, q)
    yield x * y, ("*", p, q)
    yield x - y, ("-", p, q)
    yield y - x, ("-", q, p)
    if y != 0:
        yield x / y, ("/", p, q)
    if x != 0:
        yield y / x, ("/", q, p)


def _search(items: list[tuple[Fraction, Node]], target: Fraction, tidy: bool) -> Node | None:
    """Merge two items at a time; this covers every ordering and bracketing.

    With ``tidy``, only non-negative whole intermediates are kept (the TV-show rules).
    """
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for merged in combine(items[i], items[j]):
                if tidy and (merged[0] < 0 or merged[0].denominator != 1):
                    continue
                # Merged item first, so solutions read '(a + b) * c' rather than 'c * (a + b)'.
                found = _search([merged] + rest, target, tidy)
                if found is not None:
                    return found
    return None


def _format(node: Node) -> tuple[str, int]:
    """A tree's text and the precedence of its outermost operator (3 for a literal)."""
    if isinstance(node, int):
        return str(node), 3
    op, left, right = node
    (ltext, lprec), (rtext, rprec) = _format(left), _format(right)
    prec = _PRECEDENCE[op]
    if lprec < prec:
        ltext = f"({ltext})"
    # a - (b + c) and a / (b * c) keep their parentheses; a + (b - c) does not need them.
    if rprec < prec or (rprec == prec and op in "-/"):
        rtext = f"({rtext})"
    return f"{ltext} {op} {rtext}", prec


def render(node: Node) -> str:
    """A tree written with only the parentheses it needs.

    >>> render(("*", ("+", 25, 3), 2)), render(("-", 9, ("-", 5, 1)))
    ('(25 + 3) * 2', '9 - (5 - 1)')
    """
    return _format(node)[0]


def solution_tree(nums: list[int], target: int) -> Node | None:
    """A tree using each number once that equals ``target`` (whole, non-negative steps where possible)."""
    if not nums:
        return None
    items, goal = [(Fraction(n), n) for n in nums], Fraction(target)
    # A tidy solution makes a more readable trace; the full search is the fallback.
    tree = _search(items, goal, tidy=True)
    return tree if tree is not None else _search(items, goal, tidy=False)


def solve(nums: list[int], target: int) -> str | None:
    """An expression using each number once that equals ``target``, or None if none exists.

    Exhaustive and exact; a few milliseconds for four numbers, too slow beyond five or six.
    """
    tree = solution_tree([int(n) for n in nums], int(target))
    return None if tree is None else render(tree)
