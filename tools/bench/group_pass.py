"""Forward and backward of one group of k completions after a shared prompt, by layout.

    python -m tools.bench.group_pass                      # plain rows + recompute / prompt once / prompt once + recompute
    python -m tools.bench.group_pass --overheads 16 64 10000   # prompt once, rows regrouped at these per-forward overheads

The embedded SmolLM2-135M-Instruct with LoRA r16 (no adapter dropout), float32, a random prompt of
``--prompt`` tokens and k completions of random lengths in [``--min-length``, ``--max-length``]; each
variant is warmed up once and then timed ``--repeats`` times, variants alternating. Seconds per group.
"""

from __future__ import annotations

import argparse
import time

import torch


def _group(vocab: int, prompt: int, k: int, low: int, high: int, seed: int):
    from lit_align.sampling.generate import Samples

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (k,), generator=g)
    width = int(lengths.max())
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    prompt_ids = torch.randint(5, vocab, (1, prompt), generator=g).expand(k, prompt).clone()
    return Samples(prompt_ids, torch.ones_like(prompt_ids), torch.randint(5, vocab, (k, width), generator=g) * mask,
                   mask, [""] * k), lengths.tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt", type=int, default=105)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--min-length", type=int, default=100)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--overheads", type=int, nargs="*", help="compare these row-regrouping overheads instead")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from lit_align.modeling import models
    from lit_align.objectives import logprobs, shared_prompt

    model = models.apply_lora(models.load_causal_lm("embedded:smollm2-135m-instruct"),
                              models.LoRA(r=16, dropout=0.0)).train()
    models.enable_activation_checkpointing(model)
    samples, lengths = _group(model.config.vocab_size, args.prompt, args.k, args.min_length, args.max_length, args.seed)

    def run(fn):
        def step():
            fn()[0].sum().backward()
        return step

    if args.overheads:
        variants = {f"overhead {o}": run(lambda o=o: shared_prompt.shared_prompt_logprobs(model, samples, group_overhead=o))
                    for o in args.overheads}
    else:
        variants = {
            "plain rows + recompute": run(lambda: logprobs.completion_logprobs(model, samples)),
            "prompt once": run(lambda: shared_prompt.shared_prompt_logprobs(model, samples)),
            "prompt once + recompute": run(lambda: shared_prompt.shared_prompt_logprobs(model, samples, recompute=True)),
        }
    print(f"completion lengths {lengths}, prompt {args.prompt} tokens")
    for step in variants.values():
        step()
    for _ in range(args.repeats):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            print(f"{name}: {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
