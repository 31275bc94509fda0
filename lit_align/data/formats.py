"""Record schemas, validation, and tokenization into examples.

Formats (detected from a record's fields):

- ``messages``: a chat, ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
  Loss on every assistant turn.
- ``prompt`` + ``completion``: both text, or both message lists. Loss on the completion only.
- ``prompt`` alone (text or messages): a prompt to sample from (RL, evaluation).

Chat text is rendered with the tokenizer's chat template once and tokenized *without* extra special
tokens, so a template that writes BOS itself never gets a second one. Loss tokens are found by
character offsets into that one rendering, so segment boundaries cannot shift the tokenization.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from lit_align.data.sources import DataError

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenized record: ``labels`` is ``IGNORE_INDEX`` on tokens that carry no loss."""

    input_ids: list[int]
    labels: list[int]
    origin: str

    @property
    def num_loss_tokens(self) -> int:
        # The first token is never predicted (nothing precedes it), so it never counts.
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def _field(record: dict, key: str, origin: str):
    if key not in record:
        raise DataError(f"{origin}: missing field {key!r} (fields present: {sorted(record)})")
    return record[key]


def validate_messages(messages, origin: str, field: str = "messages") -> list[dict]:
    """Check a message list; errors name the record and the exact field."""
    if not isinstance(messages, list):
        raise DataError(f"{origin}: field {field!r} must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise DataError(f"{origin}: field {field!r} is an empty conversation")
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{origin}: field {where!r} must be an object, got {type(message).__name__}")
        role = _field(message, "role", f"{origin}: {where}")
        if role not in ROLES:
            raise DataError(f"{origin}: field '{where}.role' has unknown role {role!r} (expected one of {ROLES})")
        content = _field(message, "content", f"{origin}: {where}")
        if not isinstance(content, str):
            raise DataError(f"{origin}: field '{where}.content' must be a string, got {type(content).__name__}")
    return messages


def detect_format(record: dict, origin: str) -> str:
    if "messages" in record:
        return "messages"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "prompt" in record:
        return "prompt"
    raise DataError(
        f"{origin}: cannot tell the record's format from its fields {sorted(record)}; expected 'messages', "
        "'prompt'+'completion', or 'prompt'"
    )


def sft_example(record: dict, origin: str, tokenizer) -> Example:
    """Tokenize a ``messages`` or ``prompt``+``completion`` record for supervised fine-tuning."""
    kind = detect_format(record, origin)
    if kind == "messages":
        messages = validate_messages(record["messages"], origin)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{origin}: field 'messages' has no assistant turn, so nothing to learn")
        return chat_example(messages, 0, origin, tokenizer)
    if kind != "prompt_completion":
        raise DataError(f"{origin}: SFT needs 'messages' or 'prompt'+'completion', found only {sorted(record)}")
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):
        prompt = validate_messages(prompt, origin, "prompt")
        completion = validate_messages(completion, origin, "completion")
        if not any(m["role"] == "assistant" for m in completion):
            raise DataError(f"{origin}: field 'completion' has no assistant message")
        return chat_example(prompt + completion, len(prompt), origin, tokenizer)
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str):
            raise DataError(f"{origin}: field {key!r} must be a string or a message list, got {type(value).__name__}")
    if not completion:
        raise DataError(f"{origin}: field 'completion' is empty")
    return text_example(prompt, completion, origin, tokenizer)


_STOP_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROBE = "\u2063lit-align-probe\u2063"  # a text no template writes on its own


def _template_end_of_turn(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with, or None.

    Found by rendering a one-exchange chat and reading the first token after the assistant's text:
    ``<|im_end|>`` for ChatML templates (Qwen, SmolLM2), ``<|eot_id|>`` for Llama 3, and so on.
    """
    if not tokenizer.chat_template:
        return None
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = _render(tokenizer, chat, generation_prompt=False)
    except Exception:  # a template that refuses this chat shape: no end-of-turn token to learn from it
        return None
    if _PROBE not in text:
        return None
    after = tokenizer(text.split(_PROBE, 1)[1], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return after[0] if after and after[0] in special else None


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a completion: EOS, and the chat template's end-of-turn token where it differs.

    Qwen2.5-0.5B (base) names ``<|endoftext|>`` as EOS while its template closes every turn with
    ``<|im_end|>``: a chat completion ends at either.
    """
    try:
        return list(_STOP_IDS[tokenizer])
    except (KeyError, TypeError):
        pass
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_of_turn = _template_end_of_turn(tokenizer)
    if end_of_turn is not None and end_of_turn not in ids:
        ids.append(end_of_turn)
    try:
        _STOP_IDS[tokenizer] = tuple(ids)
    except TypeError:  # not weak-referenceable: recomputed each time
        pass
    return ids


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_example(messages: list[dict], loss_from: int, origin: str, tokenizer) -> Example:
    """Tokenize a chat; assistant turns at index >= ``loss_from`` carry loss up to and including the
    token that ends the turn (the template's end-of-turn token, or EOS: ``stop_token_ids``)."""
    if not tokenizer.chat_template:
        raise DataError(f"{origin}: chat records need a tokenizer with a chat template, and this one has none")
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < loss_from:
            continue
        prefix = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise DataError(
                f"{origin}: the chat template renders earlier turns differently once later turns follow, so "
                "assistant tokens cannot be located; use prompt+completion records for this tokenizer"
            )
        spans.append((len(prefix), len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    stops = set(stop_token_ids(tokenizer))
    for start, end in spans:
        in_span = [t for t, (s, _) in enumerate(offsets) if start <= s < end]
        # Text after the token that ends the turn (e.g. a newline) is never generated: no loss on it.
        last = max((t for t in in_span if ids[t] in stops), default=in_span[-1] if in_span else None)
        for t in in_span:
            if last is not None and t <= last:
                labels[t] = ids[t]
    return Example(ids, labels, origin)


def text_example(prompt: str, completion: str, origin: str, tokenizer) -> Example:
    """Plain text: prompt with the tokenizer's own special tokens, completion plus one EOS."""
    prompt_ids = prompt_text_ids(prompt, tokenizer)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return Example(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids, origin)


def prompt_text_ids(prompt: str, tokenizer) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    # Some tokenizers also append EOS to every encoded text; a prompt must not end the sequence.
    if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def prompt_of(record: dict, origin: str = "record"):
    """A record's prompt: its ``prompt`` field, or a ``messages`` conversation before its last assistant turn."""
    if "messages" in record and "prompt" not in record:
        messages = validate_messages(record["messages"], origin)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        if last == 0:
            raise DataError(f"{origin}: field 'messages' has no turn before its first assistant reply to prompt with")
        return messages[:last]
    return _field(record, "prompt", origin)


def prompt_ids(record: dict, origin: str, tokenizer) -> list[int]:
    """Token ids of a record's prompt, ready for generation (chat prompts end with the assistant header).

    A ``messages`` record's prompt is the conversation before its last assistant turn.
    """
    prompt = prompt_of(record, origin)
    if isinstance(prompt, list):
        messages = validate_messages(prompt, origin, "prompt")
        if not tokenizer.chat_template:
            raise DataError(f"{origin}: chat prompts need a tokenizer with a chat template")
        return tokenizer(_render(tokenizer, messages, generation_prompt=True), add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise DataError(f"{origin}: field 'prompt' must be a string or a message list, got {type(prompt).__name__}")
    if not prompt:
        raise DataError(f"{origin}: field 'prompt' is empty")
    return prompt_text_ids(prompt, tokenizer)


def truncate(example: Example, max_length: int, mode: str) -> Example | None:
    """Fit an example into ``max_length`` tokens: ``truncate`` cuts the end, ``drop`` returns None.

    An example whose prompt alone leaves no room for a loss token is returned as None in both modes.
    """
    if len(example.input_ids) <= max_length:
        return example
    if mode == "drop":
        return None
    if mode != "truncate":
        raise ValueError(f"truncation must be 'truncate' or 'drop', got {mode!r}")
    cut = Example(example.input_ids[:max_length], example.labels[:max_length], example.origin)
    return cut if cut.num_loss_tokens > 0 else None
