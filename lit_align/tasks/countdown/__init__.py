"""Countdown: reach a target number with arithmetic on a handful of given numbers.

A problem is ``{"target": int, "nums": [int, ...]}`` (the schema of the public
Countdown-Tasks-3to4 data used by TinyZero-style RL studies). The model must write one
expression with ``+ - * /`` and parentheses that uses every number of ``nums`` exactly once
and equals ``target``. Division is exact (rational), so ``(7 / 2) * 4 = 14`` is fine.

One module a job, all of it reachable from here (``lit_align.tasks.countdown.CountdownSource`` in
configs, checkpoints and saved config files):

- ``verifier``: the problem schema and the safe scorer of untrusted answers (``CountdownVerifier``);
- ``solver``: exhaustive exact search for a solution, written with minimal parentheses;
- ``generator``: solvable random problems;
- ``traces``: the prompt and a short synthetic reasoning trace for SFT warm-up;
- ``source``: ``CountdownSource``, problems generated or read, as SFT traces or RL prompts.

May import: ``lit_align.tasks.arithmetic``, ``lit_align.rewards``, ``lit_align.data``.
"""

from lit_align.tasks.arithmetic import parse_expression
from lit_align.tasks.countdown.generator import MAX_NUMBERS, generate_problems
from lit_align.tasks.countdown.solver import Node, solve
from lit_align.tasks.countdown.source import CountdownSource
from lit_align.tasks.countdown.traces import prompt_text, reasoning_trace, to_prompt_record, to_sft_record
from lit_align.tasks.countdown.verifier import CountdownVerifier, read_problem, score

__all__ = [
    "MAX_NUMBERS",
    "CountdownSource",
    "CountdownVerifier",
    "Node",
    "generate_problems",
    "parse_expression",
    "prompt_text",
    "read_problem",
    "reasoning_trace",
    "score",
    "solve",
    "to_prompt_record",
    "to_sft_record",
]
