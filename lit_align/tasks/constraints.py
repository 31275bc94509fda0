"""Verifiable instructions: prompts carrying checkable format constraints, and their verifier.

In the spirit of IFEval (Zhou et al., 2023, "Instruction-Following Evaluation for Large Language
Models"), written from scratch with ten kinds. A record is
``{"prompt": [messages], "constraints": [{"kind": ..., **args}, ...], "topic": str}``; each
constraint is a small frozen dataclass with an ``instruction()`` sentence for the prompt and a
``check(text)`` that decides it from the response text alone.

Policy:
    * An empty or whitespace-only response fails every constraint, even ``exclude_keyword`` and
      ``no_commas``: a non-answer follows no instruction, and RL must not learn to say nothing.
    * ``lowercase`` needs at least one cased letter and ``text == text.lower()`` (unicode-aware).
    * Words are ``text.split()``; keywords match as whole words, case-insensitively, after NFC.
    * ``bullet_count`` counts lines starting with ``* `` or ``- `` (after indentation) and some
      text, outside fenced code blocks; paragraphs are separated by blank lines.
    * ``json_output`` uses ``json.loads`` only (never eval), optionally inside one ``` or
      ```json fence; input nested too deeply for the parser fails instead of crashing.

Simplification: the generator combines at most four constraints, because ``json_output`` is
compatible with only three other kinds (``lowercase`` and the two keyword kinds).
"""

from __future__ import annotations

import json
import random
import re
import typing
import unicodedata
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar

import torch

from lit_align.data.sources import DataError
from lit_align.rewards.base import Reward

_COMMAS = (",", "\uff0c", "\u3001")  # ASCII, fullwidth and ideographic commas
_BULLET = re.compile(r"[ \t]*[*-] +\S")
_TITLE = re.compile(r"<<([^<>\n]+)>>")  # one line, no nested brackets: linear to scan


class Constraint:
    """Base of the constraint kinds: ``check`` applies the empty-response policy once, for all.

    A kind sets ``template`` (its instruction, formatted with its arguments) or overrides
    ``instruction``, and decides non-empty responses in ``_holds``.
    """

    kind: ClassVar[str]
    template: ClassVar[str] = ""

    def __post_init__(self):
        # Zero or negative counts and empty or padded words/phrases are never meant.
        for name, value in asdict(self).items():
            _require(not isinstance(value, int) or value >= 1, f"{name} must be >= 1, got {value}")
            _require(not isinstance(value, str) or value.strip() == value != "", f"{name} {value!r} is empty or padded")

    def instruction(self) -> str:
        return self.template.format(**asdict(self))

    def check(self, text: str) -> bool:
        return bool(text.strip()) and self._holds(text)

    def _holds(self, text: str) -> bool:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


def _require(ok: bool, message: str) -> None:
    """Constructors raise ValueError; ``constraint_from_dict`` re-raises it as a DataError."""
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Lowercase(Constraint):
    kind: ClassVar[str] = "lowercase"
    template: ClassVar[str] = "Write your whole answer in lowercase letters; no capital letters at all."

    def _holds(self, text: str) -> bool:
        # islower() also demands a cased letter; the equality catches capitals with no lower form.
        return text.islower() and text == text.lower()


@dataclass(frozen=True)
class WordCount(Constraint):
    kind: ClassVar[str] = "word_count"
    min_words: int | None = None
    max_words: int | None = None

    def __post_init__(self):
        super().__post_init__()
        lo, hi = self.min_words, self.max_words
        _require(lo is not None or hi is not None, "needs min_words or max_words")
        _require(lo is None or hi is None or lo <= hi, f"min_words {lo} exceeds max_words {hi}")

    def instruction(self) -> str:
        if self.max_words is None:
            return f"Answer with at least {self.min_words} words."
        if self.min_words is None:
            return f"Answer with at most {self.max_words} words."
        return f"Answer with between {self.min_words} and {self.max_words} words."

    def _holds(self, text: str) -> bool:
        n = len(text.split())
        return (self.min_words is None or n >= self.min_words) and (self.max_words is None or n <= self.max_words)


def _has_word(text: str, keyword: str) -> bool:
    """Whole-word, case-insensitive; NFC so a composed and a decomposed "é" compare equal."""
    keyword, text = unicodedata.normalize("NFC", keyword), unicodedata.normalize("NFC", text)
    # Lookarounds rather than \b, so keywords that start or end with punctuation still work.
    return re.search(rf"(?<!\w){re.escape(keyword)}(?!\w)", text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class IncludeKeyword(Constraint):
    kind: ClassVar[str] = "include_keyword"
    template: ClassVar[str] = 'Include the word "{keyword}" in your answer.'
    keyword: str

    def _holds(self, text: str) -> bool:
        return _has_word(text, self.keyword)


@dataclass(frozen=True)
class ExcludeKeyword(Constraint):
    kind: ClassVar[str] = "exclude_keyword"
    template: ClassVar[str] = 'Do not use the word "{keyword}" anywhere in your answer.'
    keyword: str

    def _holds(self, text: str) -> bool:
        return not _has_word(text, self.keyword)


@dataclass(frozen=True)
class BulletCount(Constraint):
    kind: ClassVar[str] = "bullet_count"
    template: ClassVar[str] = 'Use exactly {n} markdown bullet points, each on its own line starting with "* ".'
    n: int

    def _holds(self, text: str) -> bool:
        count, in_code = 0, False
        for line in text.splitlines():
            if line.lstrip().startswith("```"):
                in_code = not in_code
            elif not in_code and _BULLET.match(line):
                count += 1
        return count == self.n


@dataclass(frozen=True)
class ParagraphCount(Constraint):
    kind: ClassVar[str] = "paragraph_count"
    template: ClassVar[str] = "Write exactly {n} paragraphs, separated from each other by a blank line."
    n: int

    def _holds(self, text: str) -> bool:
        return sum(1 for block in re.split(r"\n\s*\n", text) if block.strip()) == self.n


@dataclass(frozen=True)
class EndsWith(Constraint):
    kind: ClassVar[str] = "ends_with"
    template: ClassVar[str] = 'End your answer with the exact phrase "{phrase}", with nothing after it.'
    phrase: str

    def _holds(self, text: str) -> bool:
        return text.rstrip().endswith(self.phrase)


@dataclass(frozen=True)
class JsonOutput(Constraint):
    kind: ClassVar[str] = "json_output"
    template: ClassVar[str] = "Give your entire answer as valid JSON (a ```json code block is fine) and nothing else."

    def _holds(self, text: str) -> bool:
        body = text.strip()
        if body.startswith("```"):  # one fence around everything, tagged json or untagged
            info, newline, inner = body[3:].partition("\n")
            if not newline or info.strip().lower() not in ("", "json") or not inner.endswith("```"):
                return False
            body = inner[:-3]
        try:
            json.loads(body)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
            return False
        return True


@dataclass(frozen=True)
class NoCommas(Constraint):
    kind: ClassVar[str] = "no_commas"
    template: ClassVar[str] = "Do not use any commas in your answer."

    def _holds(self, text: str) -> bool:
        return not any(comma in text for comma in _COMMAS)


@dataclass(frozen=True)
class Title(Constraint):
    kind: ClassVar[str] = "title"
    template: ClassVar[str] = "Give your answer a title in double angle brackets, such as <<my title>>."

    def _holds(self, text: str) -> bool:
        return any(m.group(1).strip() for m in _TITLE.finditer(text))


# The record schema: the "kind" string of a stored constraint names its class.
KINDS: dict[str, type[Constraint]] = {
    cls.kind: cls
    for cls in (
        Lowercase, WordCount, IncludeKeyword, ExcludeKeyword, BulletCount,
        ParagraphCount, EndsWith, JsonOutput, NoCommas, Title,
    )
}


def _argument(cls: type, name: str, d: dict, where: str):
    """One constructor argument from ``d``, type-checked; bool is refused where an int is wanted."""
    hint = typing.get_type_hints(cls)[name]
    allowed = typing.get_args(hint) or (hint,)
    value = d[name]
    if isinstance(value, bool) or not isinstance(value, allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise DataError(f"{where}.{name}' must be {names}, got {type(value).__name__}")
    return value


def constraint_from_dict(d: dict, origin: str, field: str = "constraint") -> Constraint:
    """A constraint from its stored ``{"kind": ..., **args}``; errors name ``origin`` and ``field``."""
    where = f"{origin}: field '{field}"
    if not isinstance(d, dict):
        raise DataError(f"{where}' must be an object, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise DataError(f"{where}.kind': unknown constraint kind {kind!r} (known: {', '.join(KINDS)})")
    cls = KINDS[kind]
    names = [f.name for f in fields(cls)]
    extra = sorted(set(d) - set(names) - {"kind"})
    if extra:
        raise DataError(f"{where}.{extra[0]}': not an argument of {kind!r} (arguments: {names})")
    missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING]
    if missing:
        raise DataError(f"{where}.{missing[0]}': missing argument of {kind!r}")
    args = {name: _argument(cls, name, d, where) for name in names if name in d}
    try:
        return cls(**args)
    except ValueError as e:
        raise DataError(f"{where}': bad {kind!r} constraint: {e}") from None


def _constraints(record: dict, origin: str) -> list[Constraint]:
    items = record.get("constraints") if isinstance(record, dict) else None
    if not isinstance(items, list) or not items:
        raise DataError(f"{origin}: field 'constraints' must be a non-empty list of constraint objects")
    return [constraint_from_dict(d, origin, f"constraints[{i}]") for i, d in enumerate(items)]


def check_record(text: str, record: dict, origin: str = "record") -> list[bool]:
    """Whether ``text`` satisfies each constraint of ``record``, in order."""
    return [c.check(text) for c in _constraints(record, origin)]


# ----------------------------------------------------------------------------- generating

_TOPICS = [
    "the ocean", "a rainy day", "learning to cook", "city bicycles", "the night sky", "an old library",
    "growing tomatoes", "a mountain hike", "moving to a new town", "the first day of school", "coffee",
    "a lost umbrella", "train travel", "honeybees", "a winter market", "learning a language",
    "an abandoned lighthouse", "board games", "a birthday surprise", "recycling",
]
_TASKS = [
    "Write a short story about {topic}.", "Explain {topic} to a child.",
    "Write a product description inspired by {topic}.", "List some facts about {topic}.",
    "Write a short poem about {topic}.", "Write a diary entry about {topic}.",
    "Give advice to someone curious about {topic}.", "Describe {topic} to someone who has never seen it.",
]
# Lowercase, comma-free, and disjoint from each other, so no draw contradicts another constraint.
_KEYWORDS = ["light", "memory", "journey", "simple", "quiet", "future", "balance", "color", "garden", "promise"]
_PHRASES = ["that is all.", "any other questions?", "thanks for reading.", "the end.", "hope this helps!"]
_WORD_BOUNDS = [(None, 40), (None, 60), (None, 80), (20, None), (30, None)]
_JSON_INCOMPATIBLE = {"bullet_count", "paragraph_count", "title", "ends_with", "no_commas", "word_count"}
MAX_CONSTRAINTS = 4  # json_output combines with only three other kinds


def _check_settings(num_prompts: int, min_constraints: int, max_constraints: int) -> None:
    if num_prompts < 0:
        raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")
    if not 1 <= min_constraints <= max_constraints <= MAX_CONSTRAINTS:
        raise ValueError(
            f"need 1 <= min_constraints <= max_constraints <= {MAX_CONSTRAINTS}, got {min_constraints}..{max_constraints}"
        )


def _compatible(kind: str, chosen: list[str]) -> bool:
    if "json_output" in chosen:
        return kind not in _JSON_INCOMPATIBLE
    return kind != "json_output" or not _JSON_INCOMPATIBLE.intersection(chosen)


def _draw(rng: random.Random, kind: str, used_keywords: set[str]) -> Constraint:
    """A constraint of ``kind`` with random arguments; a keyword is never used twice in a prompt."""
    if kind in ("include_keyword", "exclude_keyword"):
        keyword = rng.choice([k for k in _KEYWORDS if k not in used_keywords])
        used_keywords.add(keyword)
        return KINDS[kind](keyword)
    if kind == "word_count":
        return WordCount(*rng.choice(_WORD_BOUNDS))
    if kind in ("bullet_count", "paragraph_count"):
        return KINDS[kind](rng.randint(2, 5) if kind == "bullet_count" else rng.randint(2, 3))
    if kind == "ends_with":
        return EndsWith(rng.choice(_PHRASES))
    return KINDS[kind]()


def _prompt(rng: random.Random, min_constraints: int, max_constraints: int) -> dict:
    topic, task = rng.choice(_TOPICS), rng.choice(_TASKS)
    wanted, chosen = rng.randint(min_constraints, max_constraints), []
    for kind in rng.sample(sorted(KINDS), len(KINDS)):
        if len(chosen) < wanted and _compatible(kind, chosen):
            chosen.append(kind)
    used: set[str] = set()
    constraints = [_draw(rng, kind, used) for kind in chosen]
    content = " ".join([task.format(topic=topic)] + [c.instruction() for c in constraints])
    return {
        "prompt": [{"role": "user", "content": content}],
        "constraints": [c.to_dict() for c in constraints],
        "topic": topic,
    }


def generate_prompts(num_prompts: int, seed: int, min_constraints: int = 1, max_constraints: int = 3) -> list[dict]:
    """Prompt records with 1..``max_constraints`` distinct, mutually satisfiable constraints each."""
    _check_settings(num_prompts, min_constraints, max_constraints)
    rng = random.Random(seed)
    return [_prompt(rng, min_constraints, max_constraints) for _ in range(num_prompts)]


class ConstraintSource:
    """Generated instruction-following prompts for online RL (a data ``Source``)."""

    def __init__(self, num_prompts: int = 256, seed: int = 0, min_constraints: int = 1, max_constraints: int = 3):
        """
        Args:
            num_prompts: how many prompts to generate.
            seed: random seed; the same seed gives the same prompts.
            min_constraints: fewest constraints in a prompt (at least 1).
            max_constraints: most constraints in a prompt (at most 4).
        """
        # Fail at config time rather than when the data module first reads records.
        _check_settings(num_prompts, min_constraints, max_constraints)
        self.num_prompts, self.seed = num_prompts, seed
        self.min_constraints, self.max_constraints = min_constraints, max_constraints

    def records(self) -> Iterator[tuple[str, dict]]:
        prompts = generate_prompts(self.num_prompts, self.seed, self.min_constraints, self.max_constraints)
        for i, record in enumerate(prompts):
            yield f"constraints(seed={self.seed}):prompt {i}", record


# ----------------------------------------------------------------------------- scoring


class ConstraintReward(Reward):
    """Share of a record's constraints that each completion satisfies (prompts are not needed)."""

    def __init__(self, all_or_nothing: bool = False):
        """
        Args:
            all_or_nothing: reward 1.0 only when every constraint holds, else 0.0 (default: the share).
        """
        self.all_or_nothing = all_or_nothing

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        scores = []
        for i, (text, record) in enumerate(zip(completions, records)):
            results = check_record(text, record, f"record {i}")
            scores.append(float(all(results)) if self.all_or_nothing else sum(results) / len(results))
        return torch.tensor(scores, dtype=torch.float32)


def adherence(completions: list[str], records: list[dict]) -> dict:
    """Prompt-level and instruction-level accuracy (IFEval's "strict" numbers), overall and per kind."""
    if len(completions) != len(records) or not records:
        raise ValueError(f"need as many completions as records, at least one: got {len(completions)} and {len(records)}")
    prompt_hits, by_kind = 0, {}
    for i, (text, record) in enumerate(zip(completions, records)):
        results = check_record(text, record, f"record {i}")
        prompt_hits += all(results)
        for d, ok in zip(record["constraints"], results):
            by_kind.setdefault(d["kind"], []).append(ok)
    outcomes = [ok for oks in by_kind.values() for ok in oks]
    return {
        "prompt_level": prompt_hits / len(records),
        "instruction_level": sum(outcomes) / len(outcomes),
        "num_prompts": len(records),
        "num_instructions": len(outcomes),
        "by_kind": {kind: sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())},
    }
