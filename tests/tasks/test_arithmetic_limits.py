"""Each bound of the arithmetic verifier on untrusted answers, reached on its own.

The inputs here are all far under MAX_ANSWER_CHARS, so none is stopped by the length cap: each is
stopped only by the bound it is written to cross (nesting depth, literal count, magnitude of a value
or of a denominator), with that bound's own message. Every one of them is otherwise a *correct*
Countdown answer for its record, so with its bound gone it would score 1.0; with the bound it scores
the 0.1 of a present but invalid answer, and the verifier does not raise.
"""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import torch

from lit_align.tasks.arithmetic import MAX_ANSWER_CHARS, MAX_DEPTH, MAX_LITERALS, MAX_MAGNITUDE, parse_expression
from lit_align.tasks.countdown import CountdownVerifier, score

DEPTH = f"nested deeper than {MAX_DEPTH}"
LITERALS = f"more than {MAX_LITERALS} numbers"
MAGNITUDE = "intermediate value out of bounds"

BIG = 999_999  # BIG**2 = 999_998_000_001, just under MAX_MAGNITUDE = 10**12

# (id, answer, the exact value the answer would have without its bound, message)
OVER = [
    ("depth", "(" * (MAX_DEPTH + 1) + "7" + ")" * (MAX_DEPTH + 1), Fraction(7), DEPTH),
    ("depth-inside-a-sum", "2 + " + "(" * (MAX_DEPTH + 1) + "5" + ")" * (MAX_DEPTH + 1), Fraction(7), DEPTH),
    ("literals", " + ".join(["1"] * (MAX_LITERALS + 1)), Fraction(MAX_LITERALS + 1), LITERALS),
    ("literal-too-large", f"{MAX_MAGNITUDE + 1} - 1", Fraction(MAX_MAGNITUDE), MAGNITUDE),
    # The final values below are inside the bound: only an intermediate one crosses it.
    ("product", f"{BIG} * {BIG} * 2 / 2", Fraction(BIG * BIG), MAGNITUDE),
    ("sum", f"{MAX_MAGNITUDE - 1} + {MAX_MAGNITUDE - 1} - {MAX_MAGNITUDE - 1}", Fraction(MAX_MAGNITUDE - 1), MAGNITUDE),
    ("negative", f"1 - {MAX_MAGNITUDE - 1} - {MAX_MAGNITUDE - 1} + {MAX_MAGNITUDE - 1}", Fraction(2 - MAX_MAGNITUDE),
     MAGNITUDE),
    ("denominator", f"1 / {BIG} / {BIG} / 2 * {BIG} * {BIG} * 2", Fraction(1), MAGNITUDE),
]
# The same shapes exactly at each bound are accepted.
AT = [
    ("depth", "(" * MAX_DEPTH + "7" + ")" * MAX_DEPTH, Fraction(7)),
    ("literals", " + ".join(["1"] * MAX_LITERALS), Fraction(MAX_LITERALS)),
    ("literal", f"{MAX_MAGNITUDE} - 1", Fraction(MAX_MAGNITUDE - 1)),
    ("sum", f"{MAX_MAGNITUDE - 1} + 1", Fraction(MAX_MAGNITUDE)),
    ("negative", f"1 - {MAX_MAGNITUDE} - 1 + 1", Fraction(1 - MAX_MAGNITUDE)),
    ("denominator", "1 / 1000000 / 1000000 * 1000000 * 1000000", Fraction(1)),  # denominator exactly 10**12
]


def _literals(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", text)]


def _record(text: str, value: Fraction) -> dict:
    """The Countdown problem that ``text`` solves: its value as the target, its literals as the numbers."""
    assert value.denominator == 1
    return {"target": int(value), "nums": _literals(text)}


def test_the_documented_bounds():
    assert (MAX_ANSWER_CHARS, MAX_DEPTH, MAX_LITERALS, MAX_MAGNITUDE) == (200, 20, 10, 10**12)


@pytest.mark.parametrize("name, text, value, message", OVER, ids=[c[0] for c in OVER])
def test_each_bound_rejects_a_short_answer_with_its_own_message(name, text, value, message):
    assert len(text) < MAX_ANSWER_CHARS
    with pytest.raises(ValueError, match=message):
        parse_expression(text)


@pytest.mark.parametrize("name, text, value", AT, ids=[c[0] for c in AT])
def test_answers_exactly_at_each_bound_are_accepted(name, text, value):
    assert parse_expression(text) == (value, _literals(text))


def test_the_bounds_have_distinct_messages():
    messages = {}
    for name, text, _, _ in OVER:
        with pytest.raises(ValueError) as error:
            parse_expression(text)
        messages[name] = str(error.value)
    assert len({messages["depth"], messages["literals"], messages["product"]}) == 3, messages
    assert messages["depth"] == f"parentheses nested deeper than {MAX_DEPTH}"
    assert messages["literals"] == f"more than {MAX_LITERALS} numbers"


@pytest.mark.parametrize("name, text, value, message", OVER, ids=[c[0] for c in OVER])
def test_an_answer_past_a_bound_scores_as_present_but_invalid(name, text, value, message):
    record = _record(text, value)  # the answer is right for this record in every other respect
    assert score(f"<answer>{text}</answer>", record) == 0.1
    got = CountdownVerifier()([None, None], [f"I think <answer>{text}</answer>", "no tag"], [record, record])
    assert got.tolist() == pytest.approx([0.1, 0.0])


@pytest.mark.parametrize("name, text, value", AT, ids=[c[0] for c in AT])
def test_an_answer_at_a_bound_scores_full(name, text, value):
    assert score(f"<answer>{text}</answer>", _record(text, value)) == 1.0
