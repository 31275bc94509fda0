"""Instruction-following prompts: a task on a topic plus 1..3 IFEval instructions that can hold together.

The instruction kinds are IFEval's 25 (``reference.kinds()``); two kinds are combined only where IFEval's
own conflict table allows it, and each instruction's sentence is the one the reference writes for its
arguments (``reference.describe``). The arguments are drawn here, sized for short answers (a 135M model
writing at most a few hundred tokens): word counts of 40-100, 2-4 paragraphs or sections, and so on.
"""

from __future__ import annotations

import random

from lit_align.tasks.constraints import reference

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
# Lowercase and distinct, so keyword instructions of one prompt never name the same word.
_WORDS = ["light", "memory", "journey", "simple", "quiet", "future", "balance", "color", "garden", "promise",
          "river", "window", "morning", "friend", "story"]
_RELATIONS = ("less than", "at least")
_LANGUAGES = ("fr", "es", "de", "it", "pt")
_LETTERS = "abcdeilmnoprstu"
_END_PHRASES = ("Any other questions?", "Is there anything else I can help with?")
MAX_INSTRUCTIONS = 3


def check_settings(num_prompts: int, min_instructions: int, max_instructions: int) -> None:
    """Reject generator settings that are meaningless or ask for more instructions than are drawn."""
    if num_prompts < 0:
        raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")
    if not 1 <= min_instructions <= max_instructions <= MAX_INSTRUCTIONS:
        raise ValueError(f"need 1 <= min_instructions <= max_instructions <= {MAX_INSTRUCTIONS}, "
                         f"got {min_instructions}..{max_instructions}")


def _arguments(rng: random.Random, kind: str, words: list[str], request: str) -> dict:
    """IFEval kwargs for ``kind``; keyword kinds take their words from ``words`` (consumed)."""
    relation = lambda: rng.choice(_RELATIONS)  # noqa: E731
    if kind == "keywords:existence":
        return {"keywords": [words.pop(), words.pop()]}
    if kind == "keywords:frequency":
        return {"keyword": words.pop(), "frequency": rng.randint(1, 3), "relation": relation()}
    if kind == "keywords:forbidden_words":
        return {"forbidden_words": [words.pop(), words.pop()]}
    if kind == "keywords:letter_frequency":
        return {"letter": rng.choice(_LETTERS), "let_frequency": rng.randint(2, 10), "let_relation": relation()}
    if kind == "language:response_language":
        return {"language": rng.choice(_LANGUAGES)}
    if kind == "length_constraints:number_sentences":
        return {"num_sentences": rng.randint(2, 8), "relation": relation()}
    if kind == "length_constraints:number_paragraphs":
        return {"num_paragraphs": rng.randint(2, 4)}
    if kind == "length_constraints:number_words":
        return {"num_words": rng.choice((40, 60, 80, 100)), "relation": relation()}
    if kind == "length_constraints:nth_paragraph_first_word":
        paragraphs = rng.randint(2, 4)
        return {"num_paragraphs": paragraphs, "nth_paragraph": rng.randint(1, paragraphs), "first_word": words.pop()}
    if kind == "detectable_content:number_placeholders":
        return {"num_placeholders": rng.randint(1, 3)}
    if kind == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(("P.S.", "P.P.S"))}
    if kind == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.randint(2, 5)}
    if kind == "detectable_format:number_highlighted_sections":
        return {"num_highlights": rng.randint(1, 3)}
    if kind == "detectable_format:multiple_sections":
        return {"section_spliter": rng.choice(("Section", "SECTION")), "num_sections": rng.randint(2, 4)}
    if kind == "combination:repeat_prompt":
        return {"prompt_to_repeat": request}
    if kind == "startend:end_checker":
        return {"end_phrase": rng.choice(_END_PHRASES)}
    if kind == "change_case:capital_word_frequency":
        return {"capital_frequency": rng.randint(2, 10), "capital_relation": relation()}
    return {}


def _compatible(kind: str, chosen: list[str], conflicts: dict) -> bool:
    return all(kind not in conflicts.get(c, ()) and c not in conflicts.get(kind, ()) for c in chosen)


def _prompt(rng: random.Random, kinds: list[str], conflicts: dict, min_instructions: int, max_instructions: int) -> dict:
    topic, task = rng.choice(_TOPICS), rng.choice(_TASKS)
    request = task.format(topic=topic)
    wanted, chosen = rng.randint(min_instructions, max_instructions), []
    for kind in rng.sample(kinds, len(kinds)):
        if len(chosen) < wanted and _compatible(kind, chosen, conflicts):
            chosen.append(kind)
    words = rng.sample(_WORDS, len(_WORDS))
    kwargs = [_arguments(rng, kind, words, request) for kind in chosen]
    content = " ".join([request] + [reference.describe(kind, args) for kind, args in zip(chosen, kwargs)])
    return {"prompt": [{"role": "user", "content": content}], "instruction_id_list": chosen, "kwargs": kwargs, "topic": topic}


def generate_prompts(num_prompts: int, seed: int, min_instructions: int = 1, max_instructions: int = 3) -> list[dict]:
    """Prompt records in IFEval's schema with ``min_instructions``..``max_instructions`` compatible instructions."""
    check_settings(num_prompts, min_instructions, max_instructions)
    ref = reference.reference()
    kinds = sorted(ref.instructions)
    rng = random.Random(seed)
    return [_prompt(rng, kinds, ref.conflicts, min_instructions, max_instructions) for _ in range(num_prompts)]
