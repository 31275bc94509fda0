"""The ten constraint kinds: an instruction sentence for the prompt and a check of the response text.

Policy:
    * An empty or whitespace-only response fails every constraint, even ``exclude_keyword`` and
      ``no_commas``: a non-answer follows no instruction, and RL must not learn to say nothing.
    * ``lowercase`` needs at least one cased letter and ``text == text.lower()`` (unicode-aware).
    * Words are ``text.split()``; keywords match as whole words, case-insensitively, after NFC.
    * ``bullet_count`` counts lines starting with ``* `` or ``- `` (after indentation) and some
      text, outside fenced code blocks; paragraphs are separated by blank lines.
    * ``json_output`` uses ``json.loads`` only (never eval), optionally inside one ``` or
      ```json fence; input nested too deeply for the parser fails instead of crashing.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import ClassVar

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
