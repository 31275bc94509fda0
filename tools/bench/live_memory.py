"""Peak memory held by tensors during one SFT step: lit_align's log-prob path vs the model's own loss.

    python -m tools.bench.live_memory                      # this CPU, bf16 autocast
    python -m tools.bench.live_memory --device cuda        # a GPU: the same, plus CUDA's allocator peak

Peak RSS mixes tensors with the allocator's caching and the rest of the process; this counts tensor
memory only. Two paths train the policy one optimiser step (foreach AdamW, clipping at 1) on each of
the benchmark's first SFT batches, padded, under bf16 autocast (``--precision 32``: none):

- ``ops``: ``logprobs.model_token_logprobs`` (no regrouping, as on a GPU) and ``losses.sft_loss``, as
  lit_align and the bare loop compute the SFT loss;
- ``hf``: the model's forward with ``labels``, which makes the full-vocabulary logits and their
  float32 cross-entropy, as TRL's ``SFTTrainer`` computes it.

One warm-up step creates the optimiser state, then each measured step runs under the profiler with
``profile_memory``: the peak of (allocations - frees) since the step began, in MiB. On CUDA the
allocator's own peak (``max_memory_allocated`` above the step's start) is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


from .common import POLICY, Settings, Spec, autocast
from .data import ordered_batches, write_data


def _loss(path: str, model, batch):
    from lit_align.objectives import logprobs, losses, ops

    if path == "ops":
        logps, _ = logprobs.model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels, unpad=False)
        return losses.sft_loss(logps, ops.loss_mask(batch.labels), batch.loss_normalizer)
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss


def measure(path: str, device: str, precision: str, batches: int) -> list[dict]:
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.profiler import ProfilerActivity, profile

    from lit_align.modeling import models
    from lit_align.data.collate import collate_sft
    from lit_align.data.formats import IGNORE_INDEX

    settings = Settings(steps=batches, warmup=1, device=device, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_data(settings, Path(tmp))
        dm, items = ordered_batches(Spec("sft", "bare", settings, str(data_dir)))
        collated = [collate_sft(b, dm.tokenizer.pad_token_id) for b in items]
    model = models.load_causal_lm(POLICY).to(device).train()
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, foreach=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])

    def step(batch):
        with autocast(settings):
            loss = _loss(path, model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(move_data_to_device(collated[0], device))
    rows = []
    for batch in collated[1:]:
        batch = move_data_to_device(batch, device)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        with profile(activities=activities, profile_memory=True) as prof:
            step(batch)
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        live = peak = 0
        for event in events:
            if str(event.device_type()).upper().endswith(device.upper()):  # DeviceType.CPU / DeviceType.CUDA
                live += event.nbytes()
                peak = max(peak, live)
        row = {"path": path, "rows x length": "x".join(map(str, batch.input_ids.shape)),
               "labelled": int((batch.labels != IGNORE_INDEX).sum()), "tensor peak MiB": peak / 2**20}
        if device == "cuda":
            row["allocator peak MiB"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32"])
    parser.add_argument("--batches", type=int, default=2, help="measured batches, after one warm-up batch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = [row for path in ("ops", "hf") for row in measure(path, args.device, args.precision, args.batches)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:,.0f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
