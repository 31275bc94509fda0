"""Verifiable instructions: IFEval's instruction kinds as the vocabulary, judged by IFEval's reference code.

A record is in IFEval's schema, ``{"prompt": ..., "instruction_id_list": [...], "kwargs": [...]}``; every
response is judged by the reference implementation that lm-evaluation-harness ships (imported, never
copied: ``reference``), strict and loose. One module a job, all reachable from here
(``lit_align.tasks.constraints.ConstraintSource`` in configs):

- ``reference``: the reference checks, loaded offline, and the checking of ids and kwargs;
- ``punkt``: the offline sentence splitter two kinds need;
- ``schema``: a record's instructions read back and judged (``check_record``);
- ``generator``: prompts with 1..3 compatible IFEval instructions;
- ``source``: ``ConstraintSource`` (generated), ``IFEvalSource`` (google/IFEval), ``RLVRIFEvalSource``;
- ``reward``: ``ConstraintReward`` (RLVR-IF) and IFEval's four numbers (``adherence``).

May import: ``lit_align.rewards``, ``lit_align.data``.
"""

from lit_align.tasks.constraints.generator import MAX_INSTRUCTIONS, generate_prompts
from lit_align.tasks.constraints.reward import FOUR, ConstraintReward, adherence
from lit_align.tasks.constraints.schema import check_record, instructions, request_text
from lit_align.tasks.constraints.source import ConstraintSource, IFEvalSource, RLVRIFEvalSource, rlvr_instructions

__all__ = [
    "FOUR",
    "MAX_INSTRUCTIONS",
    "ConstraintReward",
    "ConstraintSource",
    "IFEvalSource",
    "RLVRIFEvalSource",
    "adherence",
    "check_record",
    "generate_prompts",
    "instructions",
    "request_text",
    "rlvr_instructions",
]
