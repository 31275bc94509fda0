"""A record's instructions as stored, in IFEval's schema, read back and judged.

A record is ``{"prompt": str | [messages], "instruction_id_list": [id, ...], "kwargs": [{...}, ...]}``
(the hub's ``google/IFEval`` rows, with the prompt as a string, and lit_align's generated prompts, with a
one-turn chat, share it); other fields (``key``, ``topic``) ride along. Errors name the record and field.
"""

from __future__ import annotations

from lit_align.data.sources import DataError
from lit_align.tasks.constraints import reference


def request_text(record: dict, origin: str = "record") -> str:
    """The request as one string: a string prompt, or the last user turn of a chat prompt."""
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise DataError(f"{origin}: field 'prompt' must be a non-empty string or a chat with a user turn")


def instructions(record: dict, origin: str = "record") -> tuple[list[str], list[dict]]:
    """The record's validated instruction ids and kwargs (``reference.validate``)."""
    if not isinstance(record, dict):
        raise DataError(f"{origin}: a record must be an object, got {type(record).__name__}")
    for field in ("instruction_id_list", "kwargs"):
        if field not in record:
            raise DataError(f"{origin}: field '{field}' is missing (IFEval's schema: instruction_id_list and kwargs)")
    return reference.validate(record["instruction_id_list"], record["kwargs"], origin)


def check_record(text: str, record: dict, origin: str = "record") -> reference.Judgement:
    """The reference's strict and loose verdicts on ``text`` for each of the record's instructions."""
    ids, kwargs = instructions(record, origin)
    return reference.judge(text, ids, kwargs, request_text(record, origin))
