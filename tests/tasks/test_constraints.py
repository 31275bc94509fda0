"""IFEval instructions judged by the reference checks: agreement with lm-eval's own scoring, the record
schema and its errors, the generator, the hub-schema sources, the reward and IFEval's four numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="IFEval's reference checks need the ifeval extra")

from lit_align.data.sources import DataError, Source
from lit_align.rewards.base import checked_rewards
from lit_align.tasks.constraints import (
    MAX_INSTRUCTIONS,
    ConstraintReward,
    ConstraintSource,
    IFEvalSource,
    RLVRIFEvalSource,
    adherence,
    check_record,
    generate_prompts,
    reference,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def lm_eval_scores(record: dict, response: str) -> dict:
    """lm-eval's own IFEval scoring of one response, called directly on an IFEval-schema doc."""
    from lm_eval.tasks.ifeval import utils

    content = record["prompt"] if isinstance(record["prompt"], str) else record["prompt"][-1]["content"]
    doc = {"key": 0, "prompt": content, "instruction_id_list": record["instruction_id_list"], "kwargs": record["kwargs"]}
    return utils.process_results(doc, [response])


# Responses written to meet and to miss many kinds: cases, lists, sections, JSON, quotes, endings, languages.
RESPONSES = [
    "",
    "   ",
    "hello world, this is all lowercase and has a comma.",
    "HELLO WORLD THIS IS ALL CAPITAL LETTERS AND NO COMMA",
    "<<A Title>>\nThe sea is wide. It is blue. Boats float on it.\nP.S. I love the sea.",
    '"the whole answer is wrapped in double quotes without any comma"',
    "* first point\n* second point\n* third point",
    "* one\n* two\n* three\n* four\n* five",
    "Section 1\nThe light of the morning.\nSection 2\nA quiet river.\nSection 3\nA friend.",
    "SECTION 1\nfirst part\nSECTION 2\nsecond part",
    "first paragraph about the garden\n***\nsecond paragraph with memory\n***\nthird paragraph, the end",
    '```json\n{"answer": "a promise", "light": 3}\n```',
    '{"key": "value"}',
    "My answer is yes.",
    "Le matin, la lumière entre par la fenêtre et la rivière coule doucement près du jardin tranquille.",
    "Dear [name], please meet me at [address] on [date].",
    "This has *one highlighted part* and *another highlighted part* in it.",
    "answer one\n******\nanswer two",
    "light light light memory journey simple quiet future balance color garden promise story river window",
    "Explain the night sky to a child. The sky at night is dark and has STARS and the MOON and MANY LIGHTS.",
    "It ends here. Any other questions?",
    "It ends here. Is there anything else I can help with?\nextra line after the end",
    "**Bold start**\nthe rest is in lowercase letters only\n**bold end**",
    "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday! Was it late? Yes. " * 3,
    " ".join(["word"] * 45) + ".",
    "A short one.",
]


@pytest.fixture(scope="module")
def judged_records():
    records = generate_prompts(60, seed=11)
    kinds = {k for r in records for k in r["instruction_id_list"]}
    assert kinds == set(reference.kinds()), "the fixed set must cover all 25 kinds"
    return records


def test_our_path_agrees_with_lm_eval_on_every_instruction(judged_records):
    outcomes: dict[str, set[bool]] = {}
    for record in judged_records:
        for response in RESPONSES:
            ours = check_record(response, record)
            theirs = lm_eval_scores(record, response)
            assert ours.strict == theirs["inst_level_strict_acc"], (record, response)
            assert ours.loose == theirs["inst_level_loose_acc"], (record, response)
            for kind, ok in zip(record["instruction_id_list"], ours.strict):
                outcomes.setdefault(kind, set()).add(ok)
    # the fixed set decides most kinds both ways, so a wrong argument or a swapped verdict shows
    both_ways = [k for k, seen in outcomes.items() if seen == {True, False}]
    assert len(both_ways) >= 20, sorted(set(outcomes) - set(both_ways))


def test_hub_schema_rows_with_none_filled_kwargs_agree_with_lm_eval():
    """google/IFEval stores every kind's keys in every kwargs dict, None where unused: the reference drops them."""
    rows = [json.loads(line) for line in (FIXTURES / "ifeval_sample.jsonl").read_text().splitlines()]
    assert all(None in r["kwargs"][0].values() for r in rows)
    responses = ["A cat went missing and I hope you find it. Any other questions?", "short text", RESPONSES[6],
                 "the sky is blue because light scatters.", '"A baker baked bread"', "It is bright. It is cheap.\nP.S. buy it"]
    for row, (_, record) in zip(rows, IFEvalSource(str(FIXTURES / "ifeval_sample.jsonl")).records()):
        for response in responses:
            ours = check_record(response, record)
            theirs = lm_eval_scores(row, response)
            assert (ours.strict, ours.loose) == (theirs["inst_level_strict_acc"], theirs["inst_level_loose_acc"])


def test_kwargs_as_ifeval_writes_them_decide_the_verdict():
    record = {"prompt": "p", "instruction_id_list": ["length_constraints:number_words"],
              "kwargs": [{"relation": "less than", "num_words": 5}]}
    assert check_record("one two three", record).strict == [True]
    assert check_record("one two three four five six", record).strict == [False]
    record["kwargs"] = [{"relation": "at least", "num_words": 5}]
    assert check_record("one two three", record).strict == [False]


def test_loose_accepts_what_strict_refuses_without_the_last_line():
    record = {"prompt": "p", "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Any other questions?"}]}
    judged = check_record("Here it is. Any other questions?\n(a trailing note)", record)
    assert judged.strict == [False] and judged.loose == [True]


def test_an_empty_response_follows_nothing_even_a_ban():
    record = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma", "keywords:forbidden_words"],
              "kwargs": [{}, {"forbidden_words": ["cat"]}]}
    for text in ("", " \n "):
        judged = check_record(text, record)
        assert judged.strict == judged.loose == [False, False]
    assert check_record("no commas here", record).strict == [True, True]


# ----------------------------------------------------------------------------- schema errors

GOOD = {"prompt": [{"role": "user", "content": "Write."}], "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


@pytest.mark.parametrize(("change", "message"), [
    ({"instruction_id_list": ["no_such:kind"]}, r"rec: field 'instruction_id_list\[0\]': unknown IFEval instruction 'no_such:kind'"),
    ({"instruction_id_list": []}, r"rec: field 'instruction_id_list' must be a non-empty list"),
    ({"kwargs": [{}, {}]}, r"rec: field 'kwargs' must be a list of 1 objects, one per instruction, got 2"),
    ({"kwargs": ["x"]}, r"rec: field 'kwargs\[0\]' must be an object, got str"),
    ({"kwargs": [{"num_words": 3}]}, r"rec: field 'kwargs\[0\].num_words': not an argument of 'punctuation:no_comma'"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 30}]},
     r"rec: field 'kwargs\[0\].relation': missing argument of 'length_constraints:number_words' \(the reference would draw it at random\)"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 0, "relation": "at least"}]},
     r"rec: field 'kwargs\[0\].num_words': 0 is empty or zero"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 3, "relation": "more than"}]},
     r"rec: field 'kwargs\[0\]': bad arguments for 'length_constraints:number_words'"),
])
def test_bad_records_name_the_record_and_field(change, message):
    with pytest.raises(DataError, match=message):
        check_record("text", GOOD | change, "rec")


def test_a_record_without_the_fields_says_which():
    with pytest.raises(DataError, match=r"^rec: field 'instruction_id_list' is missing"):
        check_record("text", {"prompt": "p", "constraints": [{"kind": "lowercase"}]}, "rec")


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed_and_varies_across_seeds():
    assert generate_prompts(30, seed=3) == generate_prompts(30, seed=3)
    assert generate_prompts(30, seed=3) != generate_prompts(30, seed=4)


@pytest.fixture(scope="module")
def generated():
    return generate_prompts(400, seed=0)


def test_generated_records_validate_and_carry_the_reference_sentences(generated):
    for i, record in enumerate(generated):
        assert set(record) == {"prompt", "instruction_id_list", "kwargs", "topic"}
        [message] = record["prompt"]
        ids, kwargs = reference.validate(record["instruction_id_list"], record["kwargs"], f"prompt {i}")
        assert kwargs == record["kwargs"]  # every argument given, none None
        for kind, args in zip(ids, kwargs):
            assert reference.describe(kind, args) in message["content"]
            assert sorted(args) == sorted(reference.argument_names(kind))


def test_generated_combinations_respect_ifeval_conflicts(generated):
    conflicts = reference.reference().conflicts
    counts = [len(r["instruction_id_list"]) for r in generated]
    assert set(counts) == {1, 2, 3}
    for record in generated:
        ids = record["instruction_id_list"]
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                assert b not in conflicts[a] and a not in conflicts[b], ids
    assert {k for r in generated for k in r["instruction_id_list"]} == set(reference.kinds())
    assert len(reference.kinds()) == 25


@pytest.mark.parametrize(("num", "lo", "hi"), [(-1, 1, 3), (10, 0, 3), (10, 3, 2), (10, 1, MAX_INSTRUCTIONS + 1)])
def test_generator_and_source_reject_bad_settings(num, lo, hi):
    with pytest.raises(ValueError, match="num_prompts|min_instructions"):
        generate_prompts(num, 0, lo, hi)
    with pytest.raises(ValueError, match="num_prompts|min_instructions"):
        ConstraintSource(num, 0, lo, hi)


def test_source_yields_generated_prompts_with_origins():
    source = ConstraintSource(num_prompts=5, seed=2)
    assert isinstance(source, Source)
    items = list(source.records())
    assert [origin for origin, _ in items] == [f"constraints(seed=2):prompt {i}" for i in range(5)]
    assert [record for _, record in items] == generate_prompts(5, 2)


# ----------------------------------------------------------------------------- hub-schema sources


def test_ifeval_source_reads_the_hub_schema_from_a_local_file():
    items = list(IFEvalSource(str(FIXTURES / "ifeval_sample.jsonl")).records())
    assert len(items) == 6
    origin, record = items[2]
    assert origin.endswith("ifeval_sample.jsonl:line 3")
    assert record["prompt"] == [{"role": "user", "content": record["prompt"][0]["content"]}]
    assert record["instruction_id_list"] == ["detectable_format:number_bullet_lists", "keywords:frequency"]
    assert record["kwargs"] == [{"num_bullets": 3}, {"keyword": "soil", "frequency": 2, "relation": "less than"}]
    assert record["key"] == 1003
    assert len(list(IFEvalSource(str(FIXTURES / "ifeval_sample.jsonl"), limit=2).records())) == 2


def test_rlvr_source_maps_ground_truth_to_ifeval_instructions():
    records = [r for _, r in RLVRIFEvalSource(str(FIXTURES / "rlvr_ifeval_sample.jsonl")).records()]
    assert [r["instruction_id_list"] for r in records] == [
        ["change_case:english_lowercase"], ["detectable_format:number_bullet_lists"], ["length_constraints:number_words"],
        ["length_constraints:number_words"], ["keywords:frequency", "keywords:frequency"], ["startend:end_checker"]]
    assert records[3]["kwargs"] == [{"num_words": 31, "relation": "less than"}]  # at most 30 words
    exactly_two = records[4]
    assert check_record("a leaf and a leaf", exactly_two).strict == [True, True]
    assert check_record("a leaf, a leaf, a leaf", exactly_two).strict == [True, False]
    assert check_record("a leaf", exactly_two).strict == [False, True]


@pytest.mark.parametrize(("row", "message"), [
    ({"messages": [{"role": "user", "content": "x"}], "ground_truth": "{not json"}, r"field 'ground_truth' is not valid JSON"),
    ({"messages": [{"role": "user", "content": "x"}], "ground_truth": '{"func_name": "validate_word_constraint", "N": 5, "quantifier": "around"}'},
     r"field 'ground_truth.quantifier': 'around' has no IFEval equivalent"),
    ({"messages": [{"role": "user", "content": "x"}], "ground_truth": '{"func_name": "verify_bullet_points"}'},
     r"field 'ground_truth.N' is missing for 'verify_bullet_points'"),
    ({"messages": [{"role": "user", "content": "x"}], "ground_truth": '{"func_name": "make_it_rhyme"}'},
     r"field 'ground_truth.func_name': 'make_it_rhyme' is not an RLVR-IFeval check"),
    ({"messages": [], "ground_truth": '{"func_name": "validate_title"}'}, r"field 'messages' must be a non-empty chat"),
])
def test_bad_rlvr_rows_name_the_row_and_field(tmp_path, row, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"rows.jsonl:line 1: {message}"):
        list(RLVRIFEvalSource(str(path)).records())


def test_a_bad_ifeval_row_names_the_row(tmp_path):
    path = tmp_path / "ifeval.jsonl"
    rows = [{"key": 1, "prompt": "Write.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"key": 2, "prompt": "Write.", "instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": None}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"ifeval.jsonl:line 2: field 'kwargs\[0\].keywords': missing argument"):
        list(IFEvalSource(str(path)).records())


# ----------------------------------------------------------------------------- reward and the four numbers

RECORD = {"prompt": "p", "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma", "keywords:existence"],
          "kwargs": [{}, {}, {"keywords": ["cat"]}]}


def test_reward_is_the_share_of_instructions_met():
    completions = ["the cat sat", "the cat, sat", "The dog sat", ""]
    values = ConstraintReward()([None] * 4, completions, [RECORD] * 4)
    assert values.dtype == torch.float32 and values.shape == (4,)
    assert torch.allclose(values, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))


def test_reward_loose_and_all_or_nothing():
    record = {"prompt": "p", "instruction_id_list": ["startend:end_checker", "punctuation:no_comma"],
              "kwargs": [{"end_phrase": "The end."}, {}]}
    text = "A story. The end.\n(note, with a comma)"
    assert ConstraintReward()([None], [text], [record]).tolist() == [0.0]  # strict: neither
    assert ConstraintReward(loose=True)([None], [text], [record]).tolist() == [1.0]  # without the last line: both
    assert ConstraintReward(all_or_nothing=True)([None] * 2, ["the cat sat", "the cat, sat"], [RECORD] * 2).tolist() == [1.0, 0.0]


def test_reward_passes_the_shared_checks_and_rejects_mismatched_lengths():
    values = checked_rewards(ConstraintReward(), [None, None], ["the cat sat", "X"], [RECORD, RECORD])
    assert values.tolist() == pytest.approx([1.0, 1 / 3])
    with pytest.raises(ValueError, match="2 completions but 1 records"):
        ConstraintReward()([None, None], ["a", "b"], [RECORD])
    with pytest.raises(DataError, match="record 1: field 'instruction_id_list' is missing"):
        ConstraintReward()([None, None], ["a", "b"], [RECORD, {"prompt": "p"}])


def test_the_four_numbers_on_a_hand_made_set():
    ends = {"prompt": "p", "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]}
    records = [RECORD, RECORD, ends]
    # RECORD: 3/3 and 2/3 met; ends: strict miss, loose hit (the last line dropped)
    figures = adherence(["the cat sat", "the cat, sat", "So long. Bye.\nps"], records)
    assert figures["prompt_level_strict"] == pytest.approx(1 / 3)
    assert figures["instruction_level_strict"] == pytest.approx(5 / 7)
    assert figures["prompt_level_loose"] == pytest.approx(2 / 3)
    assert figures["instruction_level_loose"] == pytest.approx(6 / 7)
    assert figures["num_prompts"] == 3 and figures["num_instructions"] == 7
    assert figures["by_kind"]["punctuation:no_comma"] == 0.5 and figures["by_kind"]["startend:end_checker"] == 0.0


# ----------------------------------------------------------------------------- offline sentence splitting


def test_sentence_splitting_works_offline_with_the_substitute(tmp_path):
    """A fresh process with an empty cache and no NLTK data: the substitute model is written and used."""
    code = ("import nltk; nltk.data.path[:] = []\n"
            "from lit_align.tasks.constraints.punkt import ensure_punkt\n"
            "print(ensure_punkt())\n"
            "print(len(nltk.sent_tokenize('Dr. Smith came at 5 p.m. on Monday. He left! Did he? Yes.')))\n")
    env = {"LIT_ALIGN_CACHE": str(tmp_path), "NLTK_DATA": str(tmp_path / "none"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["nupunkt", "4"]
    assert (tmp_path / "nltk_data/tokenizers/punkt_tab/english/abbrev_types.txt").is_file()
