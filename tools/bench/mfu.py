"""Model FLOPs utilisation of lit_align's SFT on a Qwen2.5-0.5B-sized model (randomly initialised).

    python -m tools.bench.mfu --batch 8 --seq 2048 --steps 10 --warmup 3 --precision bf16-mixed

Runs the real ``SFT`` LightningModule under a Lightning ``Trainer`` on one GPU, on full rows of random
token ids (every position but the first carries loss), and reports seconds per optimiser step,
tokens per second, peak GPU memory and MFU:

    model FLOPs per step = tokens x (6 x N + 6 x L x T x d)

with N the parameters that take part in matrix products (every parameter but the input embedding
lookup; the tied output head counts), L layers, T the row length and d the attention width (the
causal-attention term: 12·L·T·d halved for the masked half). Recomputation is not counted. MFU
divides by the card's dense bf16 peak (``--peak-tflops``, else looked up from its name).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path


# dense bf16 peaks in TFLOP/s (no sparsity), from the vendors' data sheets, SXM parts
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)


def flops_per_step(model, tokens: int, seq: int) -> tuple[float, int]:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters()) - (
        0 if cfg.tie_word_embeddings else model.get_input_embeddings().weight.numel())
    attention = 6 * cfg.num_hidden_layers * seq * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    return tokens * (6 * n + attention), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--tokenizer", default=".bench_models/smollm2-135m-instruct", help="any tokenizer folder")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--peak-tflops", type=float)
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script on a cut-down model")
    p.add_argument("--layers", type=int, help="fewer decoder layers (a dry run on CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import lightning as L
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from lit_align.data.collate import SFTBatch
    from lit_align.methods import SFT

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="qwen05-random-"))
    shape = QWEN25_05B | ({"num_hidden_layers": args.layers} if args.layers else {})
    model = Qwen2ForCausalLM(Qwen2Config(**shape))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(folder)
    del model

    steps = args.warmup + args.steps
    batches = []
    for _ in range(steps):
        ids = torch.randint(100, QWEN25_05B["vocab_size"], (args.batch, args.seq))
        labels = ids.clone()
        labels[:, 0] = -100
        batches.append(SFTBatch(ids, torch.ones_like(ids), labels, loss_normalizer=float(args.batch * (args.seq - 1))))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

    ends: list[float] = []
    cuda = args.device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            sync()
            ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            ends.append(time.perf_counter())
            if len(ends) == args.warmup + 1 and cuda:
                torch.cuda.reset_peak_memory_stats()

    module = SFT(model=str(folder), dtype="float32", warmup_steps=0)
    if args.compile:
        original = module.configure_model

        def configure_and_compile():
            original()
            for layer in module.policy.model.layers:
                layer.compile()

        module.configure_model = configure_and_compile
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=args.precision, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[Clock()])
    trainer.fit(module, train_dataloaders=loader)

    durations = [b - a for a, b in itertools.pairwise(ends)][args.warmup :]
    step_s = sorted(durations)[len(durations) // 2]
    tokens = args.batch * args.seq
    flops, n = flops_per_step(module.policy, tokens, args.seq)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    result = {
        "gpu": name, "precision": args.precision, "compile": args.compile, "batch": args.batch, "seq": args.seq,
        "matmul_params": n, "median_step_s": step_s, "step_s": durations, "tokens_per_s": tokens / step_s,
        "model_tflops_per_s": flops / step_s / 1e12, "peak_tflops": peak,
        "mfu": flops / step_s / 1e12 / peak if peak else None,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
