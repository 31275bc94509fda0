"""Countdown task: generator, solver, traces, prompts, and the verifier under hostile input."""

from __future__ import annotations

import json
import re
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from lit_align.data.sources import DataError, LocalFile, Source
from lit_align.tasks.arithmetic import MAX_DEPTH
from lit_align.tasks.countdown import (
    CountdownSource,
    CountdownVerifier,
    generate_problems,
    parse_expression,
    prompt_text,
    reasoning_trace,
    score,
    solve,
    to_prompt_record,
    to_sft_record,
)

from in_memory import InMemory

RECORD = {"target": 56, "nums": [25, 3, 2]}


def answer(text: str) -> str:
    return f"<think>working</think>\n<answer>{text}</answer>"


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed_and_varies_across_seeds():
    assert generate_problems(50, seed=7) == generate_problems(50, seed=7)
    assert generate_problems(50, seed=7) != generate_problems(50, seed=8)


def test_generator_schema_and_ranges():
    problems = generate_problems(200, seed=1, min_numbers=3, max_numbers=4, max_number=50, max_target=300)
    assert len(problems) == 200
    sizes = set()
    for p in problems:
        assert set(p) == {"target", "nums"}
        assert type(p["target"]) is int and 1 <= p["target"] <= 300
        assert all(type(n) is int and 1 <= n <= 50 for n in p["nums"])
        sizes.add(len(p["nums"]))
    assert sizes == {3, 4}


def test_generator_respects_fixed_count():
    assert {len(p["nums"]) for p in generate_problems(30, seed=2, min_numbers=4, max_numbers=4)} == {4}


def test_every_generated_problem_is_solvable_and_its_solution_scores_full():
    for p in generate_problems(150, seed=3):
        expr = solve(p["nums"], p["target"])
        assert expr is not None, p
        assert score(answer(expr), p) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_problems": -1},
        {"num_problems": 1, "min_numbers": 4, "max_numbers": 3},
        {"num_problems": 1, "min_numbers": 1, "max_numbers": 3},
        {"num_problems": 1, "max_numbers": 9},
        {"num_problems": 1, "max_number": 0},
        {"num_problems": 1, "max_target": 0},
    ],
)
def test_generator_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        generate_problems(**kwargs)


# ----------------------------------------------------------------------------- solver


@pytest.mark.parametrize(
    "nums, target",
    [([25, 3, 2], 56), ([1, 2, 3, 4], 24), ([3, 3, 8, 8], 24), ([100, 4, 5], 5), ([7], 7), ([6, 6], 1)],
)
def test_solve_known_cases(nums, target):
    expr = solve(nums, target)
    assert expr is not None
    value, literals = parse_expression(expr)
    assert value == target and sorted(literals) == sorted(nums)


def test_solve_needs_fractions_for_the_classic_8_8_3_3():
    # 24 from 3, 3, 8, 8 is only reachable through 8 / (3 - 8 / 3).
    assert "/" in solve([3, 3, 8, 8], 24)


@pytest.mark.parametrize("nums, target", [([1, 1, 1], 100), ([1, 1, 1, 1], 999), ([2], 3), ([], 0)])
def test_solve_returns_none_when_impossible(nums, target):
    assert solve(nums, target) is None


def test_solve_is_fast_for_four_numbers_even_when_unsolvable():
    start = time.perf_counter()
    assert solve([1, 1, 1, 1], 999) is None  # no shortcut: the whole search space is visited
    assert solve([97, 89, 83, 79], 1) is None
    assert time.perf_counter() - start < 0.5


def test_solve_uses_minimal_parentheses():
    assert solve([25, 3, 2], 56) == "(25 + 3) * 2"


# ----------------------------------------------------------------------------- traces and prompts


def test_trace_shape_and_correct_final_answer():
    for p in generate_problems(60, seed=4):
        trace = reasoning_trace(p)
        assert trace.startswith("<think>\n") and trace.endswith("</answer>")
        assert "</think>\n<answer>" in trace
        assert score(trace, p) == 1.0
        assert 15 <= len(trace.split()) <= 90


def test_trace_misses_are_computed_honestly():
    for p in generate_problems(60, seed=5):
        tries = re.findall(r"^Try (.+?) = (-?\d+), too (small|big)\.$", reasoning_trace(p), flags=re.M)
        for expr, value, verdict in tries:
            got, literals = parse_expression(expr)
            assert got == int(value) != p["target"]
            assert sorted(literals) == sorted(p["nums"])
            assert (verdict == "small") == (got < p["target"])


def test_trace_is_deterministic_and_seedable():
    p = {"target": 24, "nums": [4, 7, 8, 8]}
    assert reasoning_trace(p) == reasoning_trace(p)
    assert reasoning_trace(p, seed=1) == reasoning_trace(p, seed=1)
    assert len({reasoning_trace(p, seed=s) for s in range(10)}) > 1


def test_trace_raises_for_unsolvable_problem():
    with pytest.raises(ValueError):
        reasoning_trace({"target": 100, "nums": [1, 1, 1]})


def test_prompt_mentions_numbers_target_and_tags():
    text = prompt_text(RECORD)
    assert "56" in text and "25, 3, 2" in text
    assert "<think>" in text and "<answer>" in text and "exactly once" in text


def test_sft_and_prompt_records():
    sft = to_sft_record(RECORD, seed=0)
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"]
    assert sft["messages"][0]["content"] == prompt_text(RECORD)
    assert sft["messages"][1]["content"] == reasoning_trace(RECORD, seed=0)
    assert (sft["target"], sft["nums"]) == (56, [25, 3, 2])
    prompt = to_prompt_record({"target": "56", "nums": ["25", "3", "2"]})
    assert prompt == {"prompt": [{"role": "user", "content": prompt_text(RECORD)}], "target": 56, "nums": [25, 3, 2]}


# ----------------------------------------------------------------------------- verifier


@pytest.mark.parametrize(
    "completion, expected",
    [
        (answer("(25 + 3) * 2"), 1.0),
        (answer("2 * (3 + 25)"), 1.0),
        (answer("  ( 25+3 )*2 \n"), 1.0),
        (answer("25 + 3 * 2"), 0.1),  # wrong value
        (answer("(25 + 3) * 2 * 1"), 0.1),  # extra number
        (answer("(25 + 25) + 3 * 2"), 0.1),  # 25 reused
        (answer("28 * 2"), 0.1),  # 25 and 3 missing, right value
        (answer("(25 + 3) * 2 + 3 / (2 - 2)"), 0.1),  # division by zero
        (answer(""), 0.1),
        (answer("fifty-six"), 0.1),
        (answer("(25 + 3) * 2 = 56"), 0.1),
        (answer("-(25 + 3) * -2"), 0.1),  # unary minus is not part of the grammar
        ("(25 + 3) * 2", 0.0),
        ("<answer>(25 + 3) * 2", 0.0),
        ("", 0.0),
        ("<answer>1</answer> then <answer>(25 + 3) * 2</answer>", 1.0),  # the last one counts
        ("<answer>(25 + 3) * 2</answer> then <answer>1</answer>", 0.1),
        ("<answer>(25 + 3) * 2</answer><answer>", 1.0),  # an unclosed tag is not an answer
    ],
)
def test_score_table(completion, expected):
    assert score(completion, RECORD) == expected


def test_score_accepts_string_typed_records():
    good = answer("(25 + 3) * 2")
    assert score(good, {"target": "56", "nums": ["25", "3", "2"]}) == 1.0
    assert score(good, {"target": 56, "nums": "[25, 3, 2]"}) == 1.0
    assert score(answer("25 * 2 + 3"), {"target": "56", "nums": ["25", "3", "2"]}) == 0.1


def test_score_is_exact_with_fractions():
    assert score(answer("8 / (3 - 8 / 3)"), {"target": 24, "nums": [3, 3, 8, 8]}) == 1.0
    assert score(answer("1 / 3 * 3"), {"target": 1, "nums": [1, 3, 3]}) == 1.0


HOSTILE = [
    "*".join(["9"] * 5000),
    "(" * 10000 + "1" + ")" * 10000,
    "(25 + ٣) * 2",  # Arabic-Indic digit
    "(25 + ３) * 2",  # fullwidth digit
    "__import__('os').system('x')",
    "1e9",
    "2**1000",
    "1" * 100_000,
    "9" * 5000,
    "1/97/97/97/97/97/97/97",  # denominator past the bound
    "99999*99999*99999",  # product past the bound
    "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
    "1+1+1+1+1+1+1+1+1+1+1",  # more literals than allowed
    "(25 + 3) * 2</answer>",
    "(25 + 3)\x00 * 2",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_answers_score_low_and_fast(text):
    start = time.perf_counter()
    got = score(f"<answer>{text}</answer>", RECORD)
    assert time.perf_counter() - start < 0.5
    assert got == 0.1


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>" * 50_000 + "(25 + 3) * 2",  # many openings, never closed
        "</answer>" * 50_000,
        "<answer" + "x" * 100_000,
    ],
)
def test_hostile_completions_without_an_answer_score_zero_fast(completion):
    start = time.perf_counter()
    got = score(completion, RECORD)
    assert time.perf_counter() - start < 0.5
    assert got == 0.0


def test_answer_tag_tricks():
    # The pair that closes last wins; a stray closing tag inside it spoils the answer.
    assert score("<answer>(25 + 3) * 2</answer>9</answer>", RECORD) == 0.1
    assert score("<answer><answer>(25 + 3) * 2</answer>", RECORD) == 1.0


def test_verifier_maps_score_and_checks_lengths():
    verify = CountdownVerifier()
    got = verify([None] * 3, [answer("(25 + 3) * 2"), answer("1"), "none"], [RECORD] * 3)
    assert got.dtype == torch.float32 and got.tolist() == pytest.approx([1.0, 0.1, 0.0])
    with pytest.raises(ValueError):
        verify([None], [answer("1")], [RECORD, RECORD])


# ----------------------------------------------------------------------------- parser


def test_parse_expression_value_and_literals():
    assert parse_expression("(25 + 3) * 2") == (Fraction(56), [25, 3, 2])
    assert parse_expression("7 / 2") == (Fraction(7, 2), [7, 2])
    assert parse_expression("10 - 4 - 3") == (Fraction(3), [10, 4, 3])  # left to right
    assert parse_expression("2 * 3 + 4 * 5") == (Fraction(26), [2, 3, 4, 5])
    nested = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert parse_expression(nested) == (Fraction(1), [1])


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("1 +", "expected a number"),
        ("(1 + 2", "missing"),
        ("1 2", "after the expression"),
        ("-1", "unexpected"),
        ("1 / 0", "division by zero"),
        ("1 ^ 2", "unexpected character"),
        ("1" * 300, "longer than"),
    ],
)
def test_parse_expression_rejects_with_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_expression(text)


# ----------------------------------------------------------------------------- source


def test_source_yields_requested_records_with_origins():
    source = CountdownSource(num_problems=12, seed=3)
    assert isinstance(source, Source)
    items = list(source.records())
    assert [origin for origin, _ in items] == [f"countdown(seed=3):problem {i}" for i in range(12)]
    for _, record in items:
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert score(record["messages"][1]["content"], record) == 1.0
    assert items == list(CountdownSource(num_problems=12, seed=3).records())
    assert items != list(CountdownSource(num_problems=12, seed=4).records())


def test_source_without_traces_gives_prompt_records():
    items = list(CountdownSource(num_problems=5, seed=0, with_traces=False).records())
    assert len(items) == 5
    for _, record in items:
        assert set(record) == {"prompt", "target", "nums"}
        assert record["prompt"][0]["role"] == "user"


def test_source_rejects_bad_settings_at_construction():
    with pytest.raises(ValueError):
        CountdownSource(min_numbers=5, max_numbers=3)


HUB_SAMPLE = Path(__file__).parents[1] / "fixtures" / "countdown_tasks_3to4_sample.jsonl"


def test_hub_sample_fixture_has_the_hub_schema_and_only_solvable_problems():
    rows = [json.loads(line) for line in HUB_SAMPLE.read_text().splitlines()]
    assert len(rows) == 32
    for row in rows:
        assert set(row) == {"target", "nums"} and isinstance(row["target"], int) and 3 <= len(row["nums"]) <= 4
        assert score(f"<answer>{solve(row['nums'], row['target'])}</answer>", row) == 1.0


def test_source_reads_bare_hub_problems_as_prompts_or_traces():
    raw = list(LocalFile(str(HUB_SAMPLE)).records())
    prompts = list(CountdownSource(num_problems=5, with_traces=False, problems=LocalFile(str(HUB_SAMPLE))).records())
    assert [origin for origin, _ in prompts] == [origin for origin, _ in raw[:5]]  # errors point at the file line
    for (_, problem), (_, record) in zip(raw, prompts):
        assert record == to_prompt_record(problem)
    traces = list(CountdownSource(num_problems=100, problems=LocalFile(str(HUB_SAMPLE))).records())
    assert len(traces) == len(raw) and all(score(r["messages"][1]["content"], r) == 1.0 for _, r in traces)


@pytest.mark.parametrize("record, message", [
    ({"nums": [1, 2]}, "needs fields 'target' and 'nums'"),
    ({"target": "ten", "nums": [1, 2]}, "'target' must be an integer"),
    ({"target": 1000, "nums": [1, 2, 3]}, "no solution for target 1000"),
    ({"target": 6, "nums": [1, 1, 1, 1, 1, 1]}, "at most 5"),
])
def test_source_names_the_record_of_a_bad_hub_problem(record, message):
    with pytest.raises(DataError, match=f"hub:record 0: .*{message}"):
        list(CountdownSource(problems=InMemory([record], name="hub")).records())
