"""Randomly initialised copies of the benchmark's models, for machines without the embedded weights.

    python -m tools.bench.random_models --skeletons .bench_models --out /tmp/bench_models
    export LIT_ALIGN_BENCH_POLICY=/tmp/bench_models/smollm2-135m-instruct LIT_ALIGN_BENCH_RM=/tmp/bench_models/all-minilm-l6-v2

``--write-skeletons DIR`` (run where the embedded models are cached) copies each model's config and
tokenizer files, a few MB and no weights. On the other machine, the weights are drawn at random from
those configs (seed 0) and saved next to them. Step time and memory depend on the architecture and
the token counts, not on the weights' values; sampled lengths do (RLOO), so the GPU table says so.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

MODELS = {"smollm2-135m-instruct": "causal-lm", "all-minilm-l6-v2": "classifier"}
KEEP = ("config.json", "generation_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.txt")


def write_skeletons(out: Path) -> None:
    from lit_align.modeling import models

    for name in MODELS:
        source = Path(models.resolve(f"embedded:{name}"))
        (out / name).mkdir(parents=True, exist_ok=True)
        for file in KEEP:
            if (source / file).is_file():
                shutil.copy2(source / file, out / name / file)


def build(skeletons: Path, out: Path) -> None:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    for name, kind in MODELS.items():
        torch.manual_seed(0)
        target = out / name
        shutil.copytree(skeletons / name, target, dirs_exist_ok=True)
        config = AutoConfig.from_pretrained(target)
        config.quantization_config = None
        if kind == "classifier":
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(target)
        print(f"{target}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M random parameters")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-skeletons", type=Path, help="copy configs and tokenizers of the embedded models here")
    p.add_argument("--skeletons", type=Path, help="folder written by --write-skeletons")
    p.add_argument("--out", type=Path, help="where the random models go")
    args = p.parse_args()
    if args.write_skeletons:
        write_skeletons(args.write_skeletons)
    if args.skeletons:
        build(args.skeletons, args.out)


if __name__ == "__main__":
    main()
