"""Fixed synthetic chat data, and the exact token batches every contender of a method trains on.

Lengths are lognormal (clipped), as chat data's are: most turns short, a few long. The data goes
through lit_align's own ``AlignDataModule`` once; the TRL and bare-loop contenders are handed exactly
those tokenized examples, in the order lit_align's sampler draws them, so each optimiser step of
each contender sees the same tokens. RLOO and GRPO read the prompts of their task (``rl_task.py``:
Countdown problems by default) through the same data module.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from lit_align.modeling import models
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.kinds import PreferenceKind, PromptKind, RewardKind, SFTKind
from lit_align.data.sources import LocalFile

from . import rl_task
from .common import POLICY, RM_BACKBONE, Settings, Spec

# A small fixed vocabulary of plain English words; texts are random draws from it, so token counts
# follow the word counts closely (about 1.1-1.3 tokens per word with the SmolLM2 tokenizer).
_WORD_TEXT = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher force "
    "education good new first last long great little own other old right big high different small large "
    "next early young important few public bad same able make know take see come think look want give use "
    "find tell ask seem feel try leave call keep let begin help show hear play run move like live believe "
    "bring happen write provide sit stand lose pay meet include continue set learn lead understand watch "
    "follow stop create speak read allow add spend grow open walk win offer remember love consider appear"
)
_WORDS = _WORD_TEXT.split()



def _length(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))))


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words)).capitalize() + "."


def _turns(rng: random.Random, s: Settings, max_words: int) -> tuple[str, str, str]:
    prompt = _text(rng, _length(rng, s.sft_prompt_words, s.sigma, 4, max_words // 2))
    a = _text(rng, _length(rng, s.sft_completion_words, s.sigma, 4, max_words))
    b = _text(rng, _length(rng, s.sft_completion_words, s.sigma, 4, max_words))
    return prompt, a, b


def write_data(s: Settings, folder: Path) -> Path:
    """Write sft/preference/prompt jsonl files (fixed seed) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(s.seed)
    n = max(s.examples_needed(b) for b in (s.sft_batch, s.dpo_batch, s.rm_batch, s.logprobs_batch)) + 8
    sft, pairs, prompts = [], [], []
    for _ in range(n):
        prompt, a, b = _turns(rng, s, s.sft_max_length)
        user = [{"role": "user", "content": prompt}]
        sft.append({"messages": user + [{"role": "assistant", "content": a}]})
        pairs.append({"prompt": user, "chosen": [{"role": "assistant", "content": a}],
                      "rejected": [{"role": "assistant", "content": b}]})
        prompts.append({"prompt": [{"role": "user", "content": "Write a long story about " + prompt.lower()}]})
    for name, rows in (("sft", sft), ("preference", pairs), ("prompt", prompts)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# method -> (file, batch kind, tokenizer, batch size field, max length field)
LAYOUT = {
    "sft": ("sft", SFTKind(), POLICY, "sft_batch", "sft_max_length"),
    "logprobs": ("sft", SFTKind(), POLICY, "logprobs_batch", "sft_max_length"),
    "dpo": ("preference", PreferenceKind(), POLICY, "dpo_batch", "dpo_max_length"),
    "rm": ("preference", RewardKind(), RM_BACKBONE, "rm_batch", "rm_max_length"),
    "rloo": ("prompt", PromptKind(), POLICY, "rloo_batch", "sft_max_length"),
    "grpo": ("prompt", PromptKind(), POLICY, "rloo_batch", "sft_max_length"),
}
RL_METHODS = ("rloo", "grpo")  # their prompts and reward: rl_task.py


def datamodule(spec: Spec, packing: bool = False) -> AlignDataModule:
    """lit_align's data module for ``spec.method``, set up with just the examples the run needs."""
    file, batch_kind, tokenizer, batch_key, length_key = LAYOUT[spec.method]
    s = spec.settings
    batch = getattr(s, batch_key)
    source, limit = LocalFile(str(Path(spec.data_dir) / f"{file}.jsonl")), s.examples_needed(batch)
    if spec.method in RL_METHODS:  # the RL task's prompts (Countdown by default)
        source, limit = rl_task.source(s.rl_task, spec.data_dir), rl_task.limit(s.rl_task, limit)
    dm = AlignDataModule(source, max_length=getattr(s, length_key), batch_size=batch, seed=s.seed, limit=limit,
                         packing=packing)
    return dm.connect(models.load_tokenizer(tokenizer), batch_kind)


def ordered_batches(spec: Spec) -> tuple[AlignDataModule, list[list]]:
    """The set-up data module and the micro-batches a run trains on, as lists of items, in lit_align's order.

    lit_align's Trainer stops after the same number of steps, so it trains on exactly these batches.
    """
    dm = datamodule(spec)
    dm.setup("fit")
    sampler = dm.train_dataloader().batch_sampler
    batches = [[dm.train_items[i] for i, _ in batch] for batch in sampler]
    return dm, batches[: spec.settings.steps_total()]
