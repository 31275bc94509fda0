"""Instruction-following prompts: a task on a topic plus 1..4 distinct, mutually satisfiable constraints.

Simplification: the generator combines at most four constraints, because ``json_output`` is
compatible with only three other kinds (``lowercase`` and the two keyword kinds).
"""

from __future__ import annotations

import random

from lit_align.tasks.constraints.checks import KINDS, Constraint, EndsWith, WordCount

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


def check_settings(num_prompts: int, min_constraints: int, max_constraints: int) -> None:
    """Reject generator settings that are meaningless or ask for more constraints than combine."""
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
    check_settings(num_prompts, min_constraints, max_constraints)
    rng = random.Random(seed)
    return [_prompt(rng, min_constraints, max_constraints) for _ in range(num_prompts)]
