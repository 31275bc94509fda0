"""IFEval's reference instruction checks, imported from lm-evaluation-harness (``lm_eval.tasks.ifeval``).

Nothing here re-implements a check: an instruction is the reference class of its id (25 kinds, e.g.
``detectable_format:number_bullet_lists``), built with its kwargs as IFEval writes them
(``{"num_bullets": 3}``, ``{"relation": "less than", "num_words": 60}``), and a response is judged by
lm-eval's own ``test_instruction_following_strict`` and ``..._loose`` (the loose check also accepts the
response without its first and/or last line and without ``*``). What is added is the checking of the
input before it reaches the reference code, which would otherwise fill a missing argument with a random
draw, silently drop a falsy one (``0``, ``""``) and skip nothing but fail late on an unknown id:

- an unknown instruction id, an argument the kind does not take, a missing argument, a falsy value or
  one the reference refuses is a ``DataError`` naming the record and field;
- an empty or whitespace-only response follows no instruction (the reference's rule too).

Two settings make the reference deterministic and offline: sentence splitting works without the
network (``punkt.ensure_punkt``), and ``langdetect`` (``language:response_language``) is seeded (0),
since unseeded it may answer differently for the same borderline text.

Needs the ``ifeval`` extra: ``pip install -e ".[ifeval]"``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lit_align.data.sources import DataError
from lit_align.tasks.constraints.punkt import ensure_punkt


@dataclass(frozen=True)
class Reference:
    """The loaded reference: lm-eval's registry, its conflict table and its judging functions."""

    instructions: dict  # id -> checker class
    conflicts: dict  # id -> ids it cannot be combined with (itself included)
    utils: object  # lm_eval.tasks.ifeval.utils
    punkt: str  # "nltk" (NLTK's own model) or "nupunkt" (the offline substitute)


@functools.lru_cache(maxsize=1)
def reference() -> Reference:
    """Import the reference checks once (after the offline sentence splitter is in place)."""
    punkt = ensure_punkt()  # before the import: lm-eval otherwise tries to download NLTK data
    try:
        import langdetect
        from lm_eval.tasks.ifeval import instructions_registry, utils
    except ImportError as e:
        raise ImportError(
            f"IFEval's reference checks need lm-eval and its IFEval dependencies ({e.name} is missing): "
            'pip install -e ".[ifeval]"'
        ) from None
    langdetect.DetectorFactory.seed = 0
    return Reference(instructions_registry.INSTRUCTION_DICT, instructions_registry.INSTRUCTION_CONFLICTS, utils, punkt)


def kinds() -> list[str]:
    """The reference instruction ids, sorted."""
    return sorted(reference().instructions)


def argument_names(kind: str) -> list[str]:
    """The kwargs an instruction of ``kind`` takes (IFEval's names, e.g. ``section_spliter``)."""
    return list(reference().instructions[kind](kind).get_instruction_args_keys())


def describe(kind: str, kwargs: dict) -> str:
    """The instruction sentence IFEval writes for ``kind`` with these arguments."""
    return reference().instructions[kind](kind).build_description(**kwargs)


def validate(ids, kwargs, origin: str) -> tuple[list[str], list[dict]]:
    """A record's ``instruction_id_list`` and ``kwargs``, checked; kwargs without their None entries
    (the hub's IFEval stores every kind's keys in every dict, None where unused)."""
    ref = reference()
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{origin}: field 'instruction_id_list' must be a non-empty list of instruction ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        n = len(kwargs) if isinstance(kwargs, list) else type(kwargs).__name__
        raise DataError(f"{origin}: field 'kwargs' must be a list of {len(ids)} objects, one per instruction, got {n}")
    cleaned = []
    for i, (kind, args) in enumerate(zip(ids, kwargs)):
        if kind not in ref.instructions:
            raise DataError(f"{origin}: field 'instruction_id_list[{i}]': unknown IFEval instruction {kind!r} (known: {', '.join(sorted(ref.instructions))})")
        where = f"{origin}: field 'kwargs[{i}]"  # closed by the caller: ' or .name'
        if not isinstance(args, dict):
            raise DataError(f"{where}' must be an object, got {type(args).__name__}")
        args = {k: v for k, v in args.items() if v is not None}
        names = argument_names(kind)
        extra = sorted(set(args) - set(names))
        if extra:
            raise DataError(f"{where}.{extra[0]}': not an argument of {kind!r} (arguments: {names})")
        missing = [n for n in names if n not in args]
        if missing:
            raise DataError(f"{where}.{missing[0]}': missing argument of {kind!r} (the reference would draw it at random)")
        for name, value in args.items():
            if not value:
                raise DataError(f"{where}.{name}': {value!r} is empty or zero, which the reference ignores")
        try:
            describe(kind, args)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}': bad arguments for {kind!r}: {e}") from None
        cleaned.append(args)
    return list(ids), cleaned


@dataclass(frozen=True)
class Judgement:
    """One response against its instructions: strict and loose, per instruction."""

    strict: list[bool]
    loose: list[bool]


def judge(response: str, ids: list[str], kwargs: list[dict], prompt: str = "") -> Judgement:
    """The reference's verdicts for validated ``ids`` and ``kwargs`` (``validate``); ``prompt`` is the
    request text, which checks that repeat the prompt read."""
    utils = reference().utils
    example = utils.InputExample(key=0, instruction_id_list=ids, prompt=prompt, kwargs=kwargs)
    strict = utils.test_instruction_following_strict(example, response).follow_instruction_list
    loose = utils.test_instruction_following_loose(example, response).follow_instruction_list
    return Judgement([bool(x) for x in strict], [bool(x) for x in loose])
