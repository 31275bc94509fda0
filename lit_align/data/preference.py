"""Preference records: a prompt with a chosen and a rejected response.

Accepted shapes (``score_chosen`` / ``score_rejected`` optional everywhere):

- ``prompt``, ``chosen``, ``rejected`` all text;
- ``prompt`` a message list, ``chosen`` / ``rejected`` message lists holding the responses;
- conversational (the ``HuggingFaceH4/ultrafeedback_binarized`` schema): ``chosen`` and
  ``rejected`` are whole conversations that share their prompt turns; the shared leading turns are
  the prompt, whatever the ``prompt`` text field says.

Everything is normalised to ``Pair(prompt, chosen, rejected)`` where the prompt is text or a
message list and each response is text or a message list, then tokenized for a policy (DPO:
``Example`` with labels on the response) or for a reward model (its own tokenizer, no labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lit_align.data.formats import (
    Example,
    chat_example,
    text_example,
    validate_messages,
)
from lit_align.data.sources import DataError


@dataclass
class Pair:
    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    score_chosen: float
    score_rejected: float
    origin: str


@dataclass
class PreferenceExample:
    """A tokenized pair. For a policy, ``labels`` mark response tokens; for a reward model they are unused."""

    chosen: Example
    rejected: Example
    score_chosen: float
    score_rejected: float
    index: int = -1


def _score(record: dict, key: str, origin: str) -> float:
    value = record.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{origin}: field {key!r} must be a number, got {type(value).__name__}")
    return float(value)


def _split_conversations(chosen: list[dict], rejected: list[dict], origin: str) -> tuple[list, list, list]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] == "assistant":
        shared -= 1  # the prompt ends before a response starts
    if shared == 0:
        raise DataError(f"{origin}: fields 'chosen' and 'rejected' share no prompt turns, so the prompt is unknown")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def parse_pair(record: dict, origin: str) -> Pair:
    """Validate a preference record and normalise it to a ``Pair``."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(f"{origin}: missing field {key!r} (fields present: {sorted(record)})")
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if isinstance(chosen, list) or isinstance(rejected, list):
        chosen = validate_messages(chosen, origin, "chosen")
        rejected = validate_messages(rejected, origin, "rejected")
        if isinstance(prompt, list):
            prompt = validate_messages(prompt, origin, "prompt")
        else:
            prompt, chosen, rejected = _split_conversations(chosen, rejected, origin)
        for key, turns in (("chosen", chosen), ("rejected", rejected)):
            if not any(m["role"] == "assistant" for m in turns):
                raise DataError(f"{origin}: field {key!r} has no assistant response after the prompt")
    else:
        for key, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                what = "missing" if value is None else f"a {type(value).__name__}"
                raise DataError(f"{origin}: field {key!r} must be text or a message list, but is {what}")
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if not value:
                raise DataError(f"{origin}: field {key!r} is empty")
    if chosen == rejected:
        raise DataError(f"{origin}: fields 'chosen' and 'rejected' are identical, so the pair teaches nothing")
    return Pair(prompt, chosen, rejected, _score(record, "score_chosen", origin), _score(record, "score_rejected", origin), origin)


def policy_example(pair: Pair, tokenizer) -> PreferenceExample:
    """Tokenize both responses after the prompt with the policy tokenizer; loss labels on responses."""

    def one(response) -> Example:
        if isinstance(pair.prompt, list):
            return chat_example(pair.prompt + response, len(pair.prompt), pair.origin, tokenizer)
        return text_example(pair.prompt, response, pair.origin, tokenizer)

    return PreferenceExample(one(pair.chosen), one(pair.rejected), pair.score_chosen, pair.score_rejected)


def _as_text(turns: str | list[dict]) -> str:
    if isinstance(turns, str):
        return turns
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def reward_ids(prompt, response, tokenizer, max_length: int) -> tuple[list[int], bool]:
    """Token ids a reward model scores for one response, and whether they were truncated.

    A tokenizer with a chat template renders the conversation; any other (BERT-style encoders)
    gets the prompt and response as a text pair; when too long, the longer of the two is cut first.
    """
    if tokenizer.chat_template and isinstance(prompt, list) and isinstance(response, list):
        text = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[:max_length], len(ids) > max_length
    full = tokenizer(_as_text(prompt), _as_text(response))["input_ids"]
    if len(full) <= max_length:
        return full, False
    cut = tokenizer(_as_text(prompt), _as_text(response), truncation="longest_first", max_length=max_length)
    return cut["input_ids"], True


def reward_example(pair: Pair, tokenizer, max_length: int) -> tuple[PreferenceExample, bool]:
    """Reward-model inputs for both responses, and whether either was truncated."""
    chosen, cut_c = reward_ids(pair.prompt, pair.chosen, tokenizer, max_length)
    rejected, cut_r = reward_ids(pair.prompt, pair.rejected, tokenizer, max_length)
    example = PreferenceExample(
        Example(chosen, [], pair.origin), Example(rejected, [], pair.origin), pair.score_chosen, pair.score_rejected
    )
    return example, cut_c or cut_r
