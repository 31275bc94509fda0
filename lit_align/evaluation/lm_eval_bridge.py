"""Evaluate an export with lm-evaluation-harness, on a task of lit_align's, offline.

Any export is a plain Hugging Face folder, so every lm-eval task runs on it as on any model
(``lm_eval --model hf --model_args pretrained=<export> --tasks ifeval --apply_chat_template``, with hub
access). This module adds lit_align's held-out Countdown problems as an lm-eval task, so the harness
and lit_align's own ``VerifierEval`` can be compared on the same prompts and export:

    python -m lit_align.evaluation.lm_eval_bridge --model outputs/quickstart/export --out outputs/lm_eval

writes the task (``<out>/task``: a YAML, a ``utils.py`` and the problems as local JSONL) and runs

    lm_eval --model hf --model_args pretrained=<export>,dtype=float32 --include_path <out>/task \\
        --tasks lit_align_countdown --batch_size 1 --device cpu --output_path <out>/results --log_samples

(``--print-only`` prints that command instead). What makes the two agree:

- **the same prompt text**: each problem's chat prompt is rendered here with the export's chat
  template, as lit_align renders it for sampling, and stored as the task's input; lm-eval is not asked
  to apply a template of its own;
- **the same stops**: generation ends at the tokenizer's EOS and the template's end-of-turn token
  (``formats.stop_token_ids``), given to lm-eval as ``until`` strings; at most ``max_new_tokens``;
- **greedy** on both sides, **one prompt at a time** in lm-eval (``--batch_size 1``): no padding, so no
  padded-batch rounding that could flip a near-tie between two tokens;
- **the same scoring**: the task's ``process_results`` calls ``CountdownVerifier``.

One known difference: lit_align decodes completions without special tokens, lm-eval keeps any special
token a model writes before the stop (a trained model rarely does; the test's random model does, and the
test compares the texts with those tokens removed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

TASK = "lit_align_countdown"

_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt_text}}}}"
doc_to_target: ""
target_delimiter: ""
generation_kwargs:
  until: {until}
  do_sample: false
  max_gen_toks: {max_new_tokens}
process_results: !function utils.process_results
metric_list:
  - metric: score
    aggregation: mean
    higher_is_better: true
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_UTILS = "from lit_align.evaluation.lm_eval_bridge import process_countdown as process_results  # noqa: F401\n"


def process_countdown(doc: dict, results: list[str]) -> dict:
    """lm-eval's per-document scoring for the Countdown task: the verifier's score and exact accuracy."""
    from lit_align.tasks.countdown import CountdownVerifier

    score = float(CountdownVerifier()([None], [results[0]], [doc["record"]])[0])
    return {"score": score, "accuracy": float(score == 1.0)}


def prompt_text(record: dict, origin: str, tokenizer) -> str:
    """A record's prompt as the text lit_align tokenizes for sampling (the chat template applied)."""
    from lit_align.data import formats

    prompt = formats.prompt_of(record, origin)
    if isinstance(prompt, list):
        return formats._render(tokenizer, formats.validate_messages(prompt, origin, "prompt"), generation_prompt=True)
    return prompt


def countdown_problems(num_problems: int, seed: int) -> list[tuple[str, dict]]:
    """The held-out Countdown problems lit_align's configs evaluate on (prompts, no traces)."""
    from lit_align.tasks.countdown import CountdownSource

    return list(CountdownSource(num_problems=num_problems, seed=seed, with_traces=False).records())


def write_task(model: str, out: Path, num_problems: int = 128, seed: int = 1234, max_new_tokens: int = 160) -> Path:
    """Write the lm-eval task folder for ``model``'s tokenizer; returns it."""
    from transformers import AutoTokenizer

    from lit_align.data.formats import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model)
    folder = out / "task"
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "countdown.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for origin, record in countdown_problems(num_problems, seed):
            f.write(json.dumps({"origin": origin, "prompt_text": prompt_text(record, origin, tokenizer), "record": record}) + "\n")
    until = [tokenizer.decode([i]) for i in stop_token_ids(tokenizer)]
    (folder / f"{TASK}.yaml").write_text(_YAML.format(task=TASK, data=json.dumps(str(data.resolve())), until=json.dumps(until),
                                                      max_new_tokens=max_new_tokens))
    (folder / "utils.py").write_text(_UTILS)
    return folder


def lm_eval_command(model: str, out: Path, limit: int | None = None) -> list[str]:
    """The lm-eval command line that runs the task folder ``write_task`` wrote under ``out``."""
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
               "--include_path", str(out / "task"), "--tasks", TASK, "--batch_size", "1", "--device", "cpu",
               "--output_path", str(out / "results"), "--log_samples"]
    return command + (["--limit", str(limit)] if limit else [])


def logged_samples(out: Path) -> list[dict]:
    """lm-eval's logged samples of the task (``--log_samples``), in document order."""
    files = sorted((out / "results").rglob(f"samples_{TASK}_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no logged samples of {TASK} under {out / 'results'}: did lm_eval run with --log_samples?")
    rows = [json.loads(line) for line in files[-1].read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder (or any Hugging Face causal LM)")
    parser.add_argument("--out", default="outputs/lm_eval", help="where the task and lm-eval's results go")
    parser.add_argument("--num-problems", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1234, help="problem seed (1234: the held-out problems of the configs)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--print-only", action="store_true", help="write the task and print the lm_eval command")
    args = parser.parse_args(argv)
    out = Path(args.out)
    write_task(args.model, out, args.num_problems, args.seed, args.max_new_tokens)
    command = lm_eval_command(args.model, out)
    print(shlex.join(command))
    if args.print_only:
        return 0
    return subprocess.run(command).returncode


if __name__ == "__main__":
    raise SystemExit(main())
