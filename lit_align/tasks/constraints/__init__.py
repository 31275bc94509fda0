"""Verifiable instructions: prompts carrying checkable format constraints, and their verifier.

In the spirit of IFEval (Zhou et al., 2023, "Instruction-Following Evaluation for Large Language
Models"), written from scratch with ten kinds. A record is
``{"prompt": [messages], "constraints": [{"kind": ..., **args}, ...], "topic": str}``; each
constraint is a small frozen dataclass with an ``instruction()`` sentence for the prompt and a
``check(text)`` that decides it from the response text alone.

One module a job, all of it reachable from here (``lit_align.tasks.constraints.ConstraintSource``
in configs, checkpoints and saved config files):

- ``checks``: the ten constraint kinds and the policy they share (``KINDS``);
- ``schema``: a record's stored constraints read back and checked (``check_record``);
- ``generator``: prompts with mutually satisfiable constraints;
- ``source``: ``ConstraintSource``, generated prompts for online RL;
- ``reward``: ``ConstraintReward`` and IFEval-style ``adherence``.

May import: ``lit_align.rewards``, ``lit_align.data``.
"""

from lit_align.tasks.constraints.checks import (
    KINDS, BulletCount, Constraint, EndsWith, ExcludeKeyword, IncludeKeyword, JsonOutput, Lowercase, NoCommas,
    ParagraphCount, Title, WordCount,
)
from lit_align.tasks.constraints.generator import MAX_CONSTRAINTS, generate_prompts
from lit_align.tasks.constraints.reward import ConstraintReward, adherence
from lit_align.tasks.constraints.schema import check_record, constraint_from_dict
from lit_align.tasks.constraints.source import ConstraintSource

__all__ = [
    "KINDS",
    "MAX_CONSTRAINTS",
    "BulletCount",
    "Constraint",
    "ConstraintReward",
    "ConstraintSource",
    "EndsWith",
    "ExcludeKeyword",
    "IncludeKeyword",
    "JsonOutput",
    "Lowercase",
    "NoCommas",
    "ParagraphCount",
    "Title",
    "WordCount",
    "adherence",
    "check_record",
    "constraint_from_dict",
    "generate_prompts",
]
