"""Verifiable-instruction constraints: each check, the record schema, the generator, reward and adherence."""

from __future__ import annotations

import time

import pytest
import torch

from lit_align.data.sources import DataError, Source
from lit_align.rewards.base import checked_rewards
from lit_align.tasks.constraints import (
    KINDS,
    BulletCount,
    ConstraintReward,
    ConstraintSource,
    EndsWith,
    ExcludeKeyword,
    IncludeKeyword,
    JsonOutput,
    Lowercase,
    NoCommas,
    ParagraphCount,
    Title,
    WordCount,
    adherence,
    check_record,
    constraint_from_dict,
    generate_prompts,
)

# One instance of every kind, for the checks that apply to all of them.
EXAMPLES = [
    Lowercase(),
    WordCount(min_words=2, max_words=5),
    WordCount(max_words=3),
    IncludeKeyword("light"),
    ExcludeKeyword("light"),
    BulletCount(2),
    ParagraphCount(2),
    EndsWith("that is all."),
    JsonOutput(),
    NoCommas(),
    Title(),
]


def test_examples_cover_every_kind():
    assert {c.kind for c in EXAMPLES} == set(KINDS) and len(KINDS) == 10


# ----------------------------------------------------------------------------- checks

CASES = [
    # lowercase: needs a cased letter, unicode-aware
    (Lowercase(), "hello world, all good.", True),
    (Lowercase(), "Hello world", False),
    (Lowercase(), "été à paris", True),
    (Lowercase(), "ÉTÉ", False),
    (Lowercase(), "été en FRANCE", False),
    (Lowercase(), "straße", True),
    (Lowercase(), "123 456 !?", False),
    # word_count: len(text.split()), bounds inclusive
    (WordCount(max_words=3), "one two three", True),
    (WordCount(max_words=3), "one two three four", False),
    (WordCount(min_words=3), "one two", False),
    (WordCount(min_words=3), "one\ttwo\n\nthree", True),
    (WordCount(min_words=2, max_words=5), "a b", True),
    (WordCount(min_words=2, max_words=5), "a b c d e", True),
    (WordCount(min_words=2, max_words=5), "a", False),
    (WordCount(min_words=2, max_words=5), "a b c d e f", False),
    # include_keyword: whole word, case-insensitive, unicode
    (IncludeKeyword("light"), "The LIGHT was on.", True),
    (IncludeKeyword("light"), "(light)", True),
    (IncludeKeyword("light"), "a lighthouse and a flashlight", False),
    (IncludeKeyword("café"), "Un CAFÉ noir.", True),
    (IncludeKeyword("café"), "Un cafe\u0301 noir.", True),  # decomposed é
    (IncludeKeyword("café"), "Two cafés.", False),
    (IncludeKeyword("café"), "A cafe.", False),
    # exclude_keyword: the same matching, negated
    (ExcludeKeyword("light"), "the lighthouse keeper", True),
    (ExcludeKeyword("light"), "Light it up", False),
    (ExcludeKeyword("café"), "CAFÉ au lait", False),
    # bullet_count: "* " or "- " lines after optional indentation, not inside ``` fences
    (BulletCount(2), "* one\n- two", True),
    (BulletCount(2), "Intro:\n  * one\n\t- two\nbye", True),
    (BulletCount(2), "* one\n* two\n* three", False),
    (BulletCount(2), "* one", False),
    (BulletCount(2), "*bold* line\n-- dashes\n---\n* one\n- two", True),
    (BulletCount(2), "* one\n```\n* not a bullet\n- nor this\n```\n- two", True),
    (BulletCount(4), "* one\n```\n* not a bullet\n- nor this\n```\n- two", False),
    (BulletCount(2), "* one\n- two\n```\n* inside an unclosed fence", True),
    # paragraph_count: blocks between blank lines, empty blocks ignored
    (ParagraphCount(2), "first\n\nsecond", True),
    (ParagraphCount(2), "\n\nfirst\nstill first\n\n \n\t\nsecond\n\n", True),
    (ParagraphCount(2), "first\nsecond", False),
    (ParagraphCount(2), "a\n\nb\n\nc", False),
    (ParagraphCount(2), "a\r\n\r\nb", True),
    # ends_with: trailing whitespace ignored, otherwise exact
    (EndsWith("that is all."), "Done. that is all.", True),
    (EndsWith("that is all."), "Done. that is all.  \n\n", True),
    (EndsWith("that is all."), "that is all. Bye.", False),
    (EndsWith("that is all."), "Done. That is all.", False),
    (EndsWith("that is all."), "Done. that is all", False),
    # json_output: json.loads on the whole text, optionally inside one fence
    (JsonOutput(), '{"a": 1, "b": [true, null]}', True),
    (JsonOutput(), "  [1, 2]\n", True),
    (JsonOutput(), '```json\n{"a": [1, 2]}\n```', True),
    (JsonOutput(), "```JSON\n[1]\n```", True),
    (JsonOutput(), "```\n[1]\n```", True),
    (JsonOutput(), "```python\n[1]\n```", False),
    (JsonOutput(), "```json\n[1]", False),
    (JsonOutput(), "```json\n```", False),
    (JsonOutput(), '{"a": 1', False),
    (JsonOutput(), 'Here you go: {"a": 1}', False),
    (JsonOutput(), "{'a': 1}", False),
    (JsonOutput(), "[" * 100_000, False),
    (JsonOutput(), "[" * 100_000 + "]" * 100_000, False),
    (JsonOutput(), "```json\n" + "[" * 100_000 + "\n```", False),
    # no_commas: ASCII, fullwidth and ideographic commas
    (NoCommas(), "no commas here.", True),
    (NoCommas(), "a, b", False),
    (NoCommas(), "一，二", False),
    (NoCommas(), "一、二", False),
    # title: <<non-empty>> on one line
    (Title(), "<<My Poem>>\nroses are red", True),
    (Title(), "text <<a>> text", True),
    (Title(), "<<>> text", False),
    (Title(), "<<   >> text", False),
    (Title(), "<<two\nlines>>", False),
    (Title(), "no title at all", False),
    (Title(), "<My Poem>", False),
]


@pytest.mark.parametrize(("constraint", "text", "expected"), CASES)
def test_check(constraint, text, expected):
    assert constraint.check(text) is expected


@pytest.mark.parametrize("text", ["", " ", "\n\t \n"])
@pytest.mark.parametrize("constraint", EXAMPLES, ids=lambda c: c.kind)
def test_empty_or_blank_response_fails_every_constraint(constraint, text):
    assert constraint.check(text) is False


def test_hostile_inputs_are_scored_quickly():
    texts = ["<<" * 50_000, "<<" + "a" * 100_000, "\n " * 50_000 + "x", "```\n" * 20_000, "- " * 50_000, "[{" * 50_000]
    start = time.perf_counter()
    for text in texts:
        for constraint in EXAMPLES:
            constraint.check(text)
    assert time.perf_counter() - start < 2.0


def test_instructions_mention_their_arguments():
    assert "lowercase" in Lowercase().instruction()
    assert "at most 3 words" in WordCount(max_words=3).instruction()
    assert "at least 20 words" in WordCount(min_words=20).instruction()
    assert "between 2 and 5 words" in WordCount(2, 5).instruction()
    assert '"light"' in IncludeKeyword("light").instruction()
    assert "exactly 4" in BulletCount(4).instruction()
    assert "exactly 3 paragraphs" in ParagraphCount(3).instruction()
    assert '"that is all."' in EndsWith("that is all.").instruction()
    assert "JSON" in JsonOutput().instruction()
    assert "<<" in Title().instruction()


# ----------------------------------------------------------------------------- record schema


@pytest.mark.parametrize("constraint", EXAMPLES, ids=lambda c: c.kind)
def test_to_dict_round_trips(constraint):
    d = constraint.to_dict()
    assert d["kind"] == constraint.kind
    assert constraint_from_dict(d, "x") == constraint


def test_to_dict_shape():
    assert WordCount(max_words=40).to_dict() == {"kind": "word_count", "min_words": None, "max_words": 40}
    assert IncludeKeyword("light").to_dict() == {"kind": "include_keyword", "keyword": "light"}
    assert NoCommas().to_dict() == {"kind": "no_commas"}


BAD = [
    ({"kind": "foo"}, r"src: field 'constraint\.kind': unknown constraint kind 'foo' \(known: lowercase, "),
    ({"n": 2}, r"src: field 'constraint\.kind': unknown constraint kind None"),
    ({"kind": ["lowercase"]}, r"src: field 'constraint\.kind': unknown"),
    ("lowercase", r"src: field 'constraint' must be an object, got str"),
    ({"kind": "bullet_count"}, r"src: field 'constraint\.n': missing argument of 'bullet_count'"),
    ({"kind": "bullet_count", "n": "3"}, r"src: field 'constraint\.n' must be int, got str"),
    ({"kind": "bullet_count", "n": True}, r"src: field 'constraint\.n' must be int, got bool"),
    ({"kind": "bullet_count", "n": 0}, r"src: field 'constraint': bad 'bullet_count' constraint: n must be >= 1"),
    ({"kind": "word_count"}, r"src: field 'constraint': .*needs min_words or max_words"),
    ({"kind": "word_count", "max_words": 2.5}, r"src: field 'constraint\.max_words' must be int or null, got float"),
    ({"kind": "word_count", "min_words": 5, "max_words": 2}, r"min_words 5 exceeds max_words 2"),
    ({"kind": "include_keyword", "keyword": ""}, r"src: field 'constraint': .*keyword '' is empty"),
    ({"kind": "ends_with", "phrase": " the end."}, r"src: field 'constraint': .*phrase ' the end\.' is empty or padded"),
    ({"kind": "lowercase", "extra": 1}, r"src: field 'constraint\.extra': not an argument of 'lowercase'"),
]


@pytest.mark.parametrize(("d", "message"), BAD)
def test_constraint_from_dict_errors_name_origin_and_field(d, message):
    with pytest.raises(DataError, match=message):
        constraint_from_dict(d, "src")


def test_check_record_checks_each_constraint_in_order():
    record = {"constraints": [{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "include_keyword", "keyword": "cat"}]}
    assert check_record("the cat, sat", record) == [True, False, True]
    assert check_record("The dog sat", record) == [False, True, False]


def test_check_record_errors_name_the_constraint_index():
    record = {"constraints": [{"kind": "lowercase"}, {"kind": "foo"}]}
    with pytest.raises(DataError, match=r"^data\.jsonl:line 7: field 'constraints\[1\]\.kind': unknown constraint kind 'foo'"):
        check_record("text", record, "data.jsonl:line 7")


@pytest.mark.parametrize("record", [{}, {"constraints": "lowercase"}, {"constraints": []}, {"constraints": None}])
def test_check_record_needs_a_constraints_list(record):
    with pytest.raises(DataError, match=r"^rec: field 'constraints' must be a non-empty list"):
        check_record("text", record, "rec")


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed_and_varies_across_seeds():
    assert generate_prompts(50, seed=3) == generate_prompts(50, seed=3)
    assert generate_prompts(50, seed=3) != generate_prompts(50, seed=4)


@pytest.fixture(scope="module")
def generated():
    return generate_prompts(500, seed=0)


def test_generated_records_have_the_schema_and_round_trip(generated):
    for i, record in enumerate(generated):
        assert set(record) == {"prompt", "constraints", "topic"}
        [message] = record["prompt"]
        assert message["role"] == "user" and record["topic"] in message["content"]
        for d in record["constraints"]:
            constraint = constraint_from_dict(d, f"prompt {i}")
            assert constraint.to_dict() == d
            assert constraint.instruction() in message["content"]
        assert len(check_record("some answer", record)) == len(record["constraints"])


def test_generated_constraint_counts_and_kinds(generated):
    counts = [len(r["constraints"]) for r in generated]
    assert set(counts) == {1, 2, 3}
    for record in generated:
        kinds = [d["kind"] for d in record["constraints"]]
        assert len(kinds) == len(set(kinds))
    assert {d["kind"] for r in generated for d in r["constraints"]} == set(KINDS)
    assert len({r["prompt"][0]["content"] for r in generated}) > 450


@pytest.mark.parametrize(("lo", "hi"), [(1, 3), (4, 4)])  # four at a time pairs the keyword kinds often
def test_generated_combinations_never_contradict(lo, hi):
    generated = generate_prompts(500, seed=5, min_constraints=lo, max_constraints=hi)
    json_excludes = {"bullet_count", "paragraph_count", "title", "ends_with", "no_commas", "word_count"}
    for record in generated:
        by_kind = {d["kind"]: d for d in record["constraints"]}
        if "json_output" in by_kind:
            assert not json_excludes & set(by_kind)
        words = [by_kind[k]["keyword"] for k in ("include_keyword", "exclude_keyword") if k in by_kind]
        assert len(words) == len(set(words))
        phrase = by_kind.get("ends_with", {}).get("phrase", "")
        for text in words + [phrase]:
            assert text == text.lower() and "," not in text
        if "exclude_keyword" in by_kind and phrase:  # the required ending must not hold the banned word
            assert ExcludeKeyword(by_kind["exclude_keyword"]["keyword"]).check(phrase)


def test_generator_can_fill_four_constraints_even_with_json():
    records = generate_prompts(300, seed=1, min_constraints=4, max_constraints=4)
    assert all(len(r["constraints"]) == 4 for r in records)
    assert any("json_output" in [d["kind"] for d in r["constraints"]] for r in records)


@pytest.mark.parametrize(("num", "lo", "hi"), [(-1, 1, 3), (10, 0, 3), (10, 3, 2), (10, 1, 5)])
def test_generator_and_source_reject_bad_settings(num, lo, hi):
    with pytest.raises(ValueError, match="num_prompts|min_constraints"):
        generate_prompts(num, 0, lo, hi)
    with pytest.raises(ValueError, match="num_prompts|min_constraints"):
        ConstraintSource(num, 0, lo, hi)


def test_source_yields_generated_prompts_with_origins():
    source = ConstraintSource(num_prompts=5, seed=2)
    assert isinstance(source, Source)
    items = list(source.records())
    assert [origin for origin, _ in items] == [f"constraints(seed=2):prompt {i}" for i in range(5)]
    assert [record for _, record in items] == generate_prompts(5, 2)


# ----------------------------------------------------------------------------- reward and adherence

RECORD = {"constraints": [{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "include_keyword", "keyword": "cat"}]}


def test_reward_is_the_share_of_constraints_met():
    completions = ["the cat sat", "the cat, sat", "The dog sat", ""]
    values = ConstraintReward()([None] * 4, completions, [RECORD] * 4)
    assert values.dtype == torch.float32 and values.shape == (4,)
    assert torch.allclose(values, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))


def test_reward_all_or_nothing():
    values = ConstraintReward(all_or_nothing=True)([None] * 3, ["the cat sat", "the cat, sat", ""], [RECORD] * 3)
    assert values.tolist() == [1.0, 0.0, 0.0]


def test_reward_passes_the_shared_checks_and_rejects_mismatched_lengths():
    values = checked_rewards(ConstraintReward(), [None, None], ["the cat sat", "X"], [RECORD, RECORD])
    assert values.tolist() == pytest.approx([1.0, 1 / 3])
    with pytest.raises(ValueError, match="2 completions but 1 records"):
        ConstraintReward()([None, None], ["a", "b"], [RECORD])
    with pytest.raises(DataError, match="record 1: field 'constraints'"):
        ConstraintReward()([None, None], ["a", "b"], [RECORD, {}])


def test_adherence_on_a_hand_made_set():
    records = [
        {"constraints": [{"kind": "lowercase"}, {"kind": "no_commas"}]},
        {"constraints": [{"kind": "include_keyword", "keyword": "cat"}]},
        {"constraints": [{"kind": "no_commas"}, {"kind": "bullet_count", "n": 2}]},
    ]
    completions = [
        "hello there",  # lowercase yes, no_commas yes: the only prompt fully followed
        "a dog",  # include_keyword no
        "* a, b\n* c",  # no_commas no, bullet_count yes
    ]
    result = adherence(completions, records)
    # 1 of 3 prompts; 2 + 0 + 1 = 3 of 5 instructions; no_commas met once in two tries.
    assert result == {
        "prompt_level": pytest.approx(1 / 3),
        "instruction_level": pytest.approx(3 / 5),
        "num_prompts": 3,
        "num_instructions": 5,
        "by_kind": {"bullet_count": 1.0, "include_keyword": 0.0, "lowercase": 1.0, "no_commas": 0.5},
    }


def test_adherence_rejects_empty_or_mismatched_input():
    with pytest.raises(ValueError):
        adherence([], [])
    with pytest.raises(ValueError):
        adherence(["a"], [RECORD, RECORD])
