"""Sampling 64 Countdown completions with Hugging Face's ``generate`` against lit_align's own loop.

    python -m tools.bench.decode_loop                 # generate / lit_align, each step of the loop taken away in turn
    python -m tools.bench.decode_loop --variants generate lit_align --repeats 2

The embedded SmolLM2-135M-Instruct with LoRA r16 (no dropout), float32, the first ``--prompts`` problems
of the embedded Countdown config in its chat template, ``--n`` samples each at temperature 1, at most
``--max-new-tokens``, one seed. Variants alternate within each repeat; each prints its seconds and the
completion tokens it drew (the lit_align variants draw the same tokens; ``generate`` draws others).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time

import torch

VARIANTS = ("generate", "lit_align", "lit_align, unmerged LoRA", "lit_align, concatenating cache")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from lit_align.modeling import models
    from lit_align.sampling import generate
    from tools.bench import rl_task

    name = "embedded:smollm2-135m-instruct"
    model = models.apply_lora(models.load_causal_lm(name), models.LoRA(r=16, dropout=0.0)).train()
    tokenizer = models.load_tokenizer(name)
    records = [r for _, r in itertools.islice(rl_task.source("countdown", "").records(), args.prompts)]
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in records]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    params = generate.SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, n=args.n)

    def patched(variant):
        stack = contextlib.ExitStack()
        if variant == "lit_align, unmerged LoRA":
            stack.enter_context(_swap(generate, "_mergeable_lora_layers", lambda model: []))
        if variant == "lit_align, concatenating cache":
            stack.enter_context(_swap(generate, "_decode_in_place", lambda cache, room: None))
        return stack

    print(f"{args.prompts} prompts x {args.n}, <= {args.max_new_tokens} new tokens, {args.threads} threads", flush=True)
    for repeat in range(args.repeats):
        for variant in args.variants:
            loop = "generate" if variant == "generate" else "lit_align"
            with patched(variant):
                start = time.perf_counter()
                out = generate.sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=args.seed,
                                      loop=loop)
                seconds = time.perf_counter() - start
            print(f"repeat {repeat} | {variant}: {seconds:.1f} s, {int(out.completion_mask.sum())} tokens", flush=True)


@contextlib.contextmanager
def _swap(module, name, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


if __name__ == "__main__":
    main()
