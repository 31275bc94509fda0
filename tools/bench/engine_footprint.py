"""The colocated vLLM engine's own memory: RSS before it starts (the policy loaded) and the peak after it
samples a generation batch, in one process with no training. Run from the vLLM environment:

    .venv-vllm/bin/python -m tools.bench.engine_footprint --prompts 8 --k 8 --max-new-tokens 160

The engine is set up as the benchmark's ``lit_align+vllm`` contender (float32, eager, ``max_model_len``
1024, ``cpu_kv_cache_gib`` 2) and samples the benchmark's prompts; the difference of the two readings
is the engine's share of a training process's peak.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


from ..study.memory import peak_rss_mib, rss_mib
from .common import POLICY, Settings, Spec, set_threads
from .data import datamodule, write_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    args = parser.parse_args()
    import torch

    from lit_align.modeling import models
    from lit_align.sampling.engines import VLLM
    from lit_align.sampling.generate import SamplingParams

    set_threads(2)
    settings = Settings(rloo_batch=args.prompts, rloo_k=args.k, rloo_max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as folder:
        spec = Spec("grpo", "lit_align+vllm", settings, str(write_data(settings, Path(folder))))
        dm = datamodule(spec)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))  # the benchmark's first generation batch
    model, tokenizer = models.load_causal_lm(POLICY), models.load_tokenizer(POLICY)
    before = rss_mib()
    engine = VLLM(dtype="float32", enforce_eager=True, max_model_len=1024, cpu_kv_cache_gib=args.kv_cache_gib)
    with torch.no_grad():
        samples = engine.sample(model, tokenizer, batch.input_ids, batch.attention_mask,
                                SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, n=args.k), seed=0)
    peak = peak_rss_mib()
    tokens = int(samples.completion_mask.sum())
    engine.close()
    print(f"{len(samples)} completions, {tokens} tokens; RSS with the policy loaded {before:.0f} MiB, "
          f"peak after sampling {peak:.0f} MiB: the engine's share {peak - before:.0f} MiB "
          f"(KV cache {args.kv_cache_gib} GiB of it)")


if __name__ == "__main__":
    main()
