"""Instruction-following prompts as data sources: generated, IFEval's own, and RLVR-IFeval's.

All three yield records in IFEval's schema (``schema``): a one-turn chat prompt, ``instruction_id_list``
and ``kwargs``, validated as they are read (a bad row is an error naming the row and field).

- ``ConstraintSource``: prompts generated here (``generator``), seeded.
- ``IFEvalSource``: ``google/IFEval`` (541 prompts, the evaluation set), from the hub or a local
  file with the same columns (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``).
- ``RLVRIFEvalSource``: ``allenai/RLVR-IFeval`` (RL training prompts), from the hub or a local file with
  its columns (``messages``, ``ground_truth``, ...). Its ``ground_truth`` names one of open-instruct's
  check functions (``{"func_name": "verify_bullet_points", "N": 3}``); each is mapped to the IFEval
  instruction(s) it checks, so the reward is judged by the same reference code as the evaluation.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from lit_align.data.sources import DataError, HubDataset, read_records
from lit_align.tasks.constraints.generator import check_settings, generate_prompts
from lit_align.tasks.constraints.schema import instructions

class ConstraintSource:
    """Generated instruction-following prompts with IFEval instructions (a data ``Source``)."""

    def __init__(self, num_prompts: int = 256, seed: int = 0, min_instructions: int = 1, max_instructions: int = 3):
        """
        Args:
            num_prompts: how many prompts to generate.
            seed: random seed; the same seed gives the same prompts.
            min_instructions: fewest instructions in a prompt (at least 1).
            max_instructions: most instructions in a prompt (at most 3).
        """
        check_settings(num_prompts, min_instructions, max_instructions)  # fail at config time
        self.num_prompts, self.seed = num_prompts, seed
        self.min_instructions, self.max_instructions = min_instructions, max_instructions

    def records(self) -> Iterator[tuple[str, dict]]:
        prompts = generate_prompts(self.num_prompts, self.seed, self.min_instructions, self.max_instructions)
        for i, record in enumerate(prompts):
            yield f"constraints(seed={self.seed}):prompt {i}", record


def _rows(name: str, split: str) -> Iterator[tuple[str, dict]]:
    """A local file's records (``read_records``) where ``name`` is one, else the hub dataset's."""
    if Path(name).suffix in (".jsonl", ".json", ".parquet") or Path(name).is_file():
        return read_records(name)
    return HubDataset(name, split).records()


class _Rows:
    """A hub dataset's (or a local file's) rows, each made a record in IFEval's schema by ``_record``."""

    def __init__(self, name: str, split: str, limit: int | None):
        self.name, self.split, self.limit = name, split, limit

    def records(self) -> Iterator[tuple[str, dict]]:
        for i, (origin, row) in enumerate(itertools.islice(_rows(self.name, self.split), self.limit)):
            yield origin, self._record(origin, row, i)

    def _record(self, origin: str, row: dict, index: int) -> dict:
        raise NotImplementedError


class IFEvalSource(_Rows):
    """IFEval's prompts (``google/IFEval``), each as a one-turn chat with its instructions."""

    def __init__(self, name: str = "google/IFEval", split: str = "train", limit: int | None = None):
        """
        Args:
            name: hub dataset id, or a local .jsonl/.json/.parquet file with IFEval's columns.
            split: the hub split (IFEval ships its 541 prompts as ``train``).
            limit: read only the first ``limit`` prompts.
        """
        super().__init__(name, split, limit)

    def _record(self, origin: str, row: dict, index: int) -> dict:
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{origin}: field 'prompt' must be a non-empty string (IFEval's schema)")
        ids, kwargs = instructions(row, origin)
        return {"prompt": [{"role": "user", "content": prompt}], "instruction_id_list": ids, "kwargs": kwargs,
                "key": row.get("key", index)}


def _relation(quantifier, n: int, origin: str) -> tuple[str, int]:
    """An RLVR quantifier and count as IFEval's (relation, count): ``at most n`` is ``less than n + 1``."""
    if quantifier in ("at least", "less than"):
        return quantifier, n
    if quantifier == "at most":
        return "less than", n + 1
    raise DataError(f"{origin}: field 'ground_truth.quantifier': {quantifier!r} has no IFEval equivalent "
                    "(IFEval's relations: 'less than', 'at least'; 'at most' is mapped)")


def _exactly(kind: str, count_name: str, relation_name: str, n: int, **fixed) -> list[tuple[str, dict]]:
    """``exactly n`` as IFEval's two instructions, ``at least n`` and ``less than n + 1``."""
    return [(kind, {**fixed, count_name: n, relation_name: "at least"}),
            (kind, {**fixed, count_name: n + 1, relation_name: "less than"})]


def rlvr_instructions(truth: dict, origin: str) -> list[tuple[str, dict]]:
    """IFEval (id, kwargs) pairs equivalent to one RLVR-IFeval ``ground_truth``."""
    name = truth.get("func_name")

    def need(key):
        value = truth.get(key)
        if value is None:
            raise DataError(f"{origin}: field 'ground_truth.{key}' is missing for {name!r}")
        return value

    simple = {
        "validate_title": "detectable_format:title", "validate_json_format": "detectable_format:json_format",
        "validate_two_responses": "combination:two_responses", "validate_uppercase": "change_case:english_capital",
        "validate_lowercase": "change_case:english_lowercase", "validate_quotation": "startend:quotation",
        "validate_no_commas": "punctuation:no_comma", "validate_choice": "detectable_format:constrained_response",
    }
    if name in simple:
        return [(simple[name], {})]
    if name == "verify_keywords":
        return [("keywords:existence", {"keywords": list(need("keyword_list"))})]
    if name == "validate_forbidden_words":
        return [("keywords:forbidden_words", {"forbidden_words": list(need("forbidden_words"))})]
    if name == "verify_keyword_frequency":
        return _exactly("keywords:frequency", "frequency", "relation", need("N"), keyword=need("word"))
    if name == "verify_letter_frequency":
        return _exactly("keywords:letter_frequency", "let_frequency", "let_relation", need("N"), letter=need("letter"))
    if name == "validate_response_language":
        return [("language:response_language", {"language": need("language")})]
    if name == "verify_paragraph_count":
        return [("length_constraints:number_paragraphs", {"num_paragraphs": need("N")})]
    if name == "validate_word_constraint":
        relation, count = _relation(need("quantifier"), need("N"), origin)
        return [("length_constraints:number_words", {"num_words": count, "relation": relation})]
    if name == "verify_sentence_constraint":
        relation, count = _relation(need("quantifier"), need("N"), origin)
        return [("length_constraints:number_sentences", {"num_sentences": count, "relation": relation})]
    if name == "validate_frequency_capital_words":
        relation, count = _relation(need("quantifier"), need("N"), origin)
        return [("change_case:capital_word_frequency", {"capital_frequency": count, "capital_relation": relation})]
    if name == "validate_paragraphs":
        return [("length_constraints:nth_paragraph_first_word",
                 {"num_paragraphs": need("N"), "nth_paragraph": need("i"), "first_word": need("first_word")})]
    if name == "verify_postscript":
        return [("detectable_content:postscript", {"postscript_marker": need("postscript_marker")})]
    if name == "validate_placeholders":
        return [("detectable_content:number_placeholders", {"num_placeholders": need("N")})]
    if name == "verify_bullet_points":
        return [("detectable_format:number_bullet_lists", {"num_bullets": need("N")})]
    if name == "validate_highlighted_sections":
        return [("detectable_format:number_highlighted_sections", {"num_highlights": need("N")})]
    if name == "validate_sections":
        return [("detectable_format:multiple_sections", {"num_sections": need("N"), "section_spliter": need("section_splitter")})]
    if name == "validate_repeat_prompt":
        return [("combination:repeat_prompt", {"prompt_to_repeat": need("original_prompt")})]
    if name == "validate_end":
        return [("startend:end_checker", {"end_phrase": need("end_phrase")})]
    raise DataError(f"{origin}: field 'ground_truth.func_name': {name!r} is not an RLVR-IFeval check this source maps")


class RLVRIFEvalSource(_Rows):
    """RLVR-IFeval's training prompts (``allenai/RLVR-IFeval``), their checks mapped to IFEval instructions."""

    def __init__(self, name: str = "allenai/RLVR-IFeval", split: str = "train", limit: int | None = None):
        """
        Args:
            name: hub dataset id, or a local .jsonl/.json/.parquet file with RLVR-IFeval's columns.
            split: the hub split.
            limit: read only the first ``limit`` prompts.
        """
        super().__init__(name, split, limit)

    def _record(self, origin: str, row: dict, index: int) -> dict:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{origin}: field 'messages' must be a non-empty chat (RLVR-IFeval's schema)")
        prompt = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "assistant")]
        truth = row.get("ground_truth")
        try:
            truth = json.loads(truth) if isinstance(truth, str) else truth
        except json.JSONDecodeError as e:
            raise DataError(f"{origin}: field 'ground_truth' is not valid JSON: {e.msg}") from None
        if isinstance(truth, list) and len(truth) == 1:  # some revisions store a one-item list
            truth = json.loads(truth[0]) if isinstance(truth[0], str) else truth[0]
        if not isinstance(truth, dict):
            raise DataError(f"{origin}: field 'ground_truth' must be a JSON object with a func_name")
        pairs = rlvr_instructions(truth, origin)
        ids, kwargs = instructions({"instruction_id_list": [k for k, _ in pairs], "kwargs": [a for _, a in pairs]}, origin)
        return {"prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}
