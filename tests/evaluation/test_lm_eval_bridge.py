"""lm-evaluation-harness on an export, offline: lit_align's Countdown task run by lm-eval agrees with
lit_align's own greedy evaluation on the same prompts and export, completion by completion."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="the lm-eval bridge needs the ifeval extra")

from lit_align.evaluation.lm_eval_bridge import countdown_problems, lm_eval_command, logged_samples, main, write_task
from lit_align.evaluation.verifier import evaluate_with_verifier
from lit_align.modeling import tiny
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import SamplingParams
from lit_align.sampling.scoring import sample_and_score
from lit_align.tasks.countdown import CountdownVerifier

PROBLEMS, NEW_TOKENS = 5, 12


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny random Llama saved as an export; its weights drawn wide (std 0.1), since at the default
    initialisation greedy decoding writes the same token every time and two pipelines would agree trivially."""
    folder = tmp_path_factory.mktemp("export")
    tokenizer = tiny.tiny_tokenizer()
    model = tiny.tiny_causal_lm(tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.eval(), tokenizer


def _specials_removed(text: str, tokenizer) -> str:
    return re.sub("|".join(re.escape(t) for t in tokenizer.all_special_tokens), "", text)


def test_lm_eval_on_the_countdown_task_agrees_with_verifier_eval(export, tmp_path):
    folder, model, tokenizer = export
    out = tmp_path / "lm_eval"
    write_task(str(folder), out, num_problems=PROBLEMS, max_new_tokens=NEW_TOKENS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(lm_eval_command(str(folder), out), capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = logged_samples(out)
    assert len(theirs) == PROBLEMS

    records = countdown_problems(PROBLEMS, 1234)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0)
    ours = [t for _, s, _ in sample_and_score(HFGenerate(), model, tokenizer, records, CountdownVerifier(), params, 1) for t in s.texts]
    result = evaluate_with_verifier(model, tokenizer, records, CountdownVerifier(), params, batch_size=1)

    assert len(set(ours)) == PROBLEMS  # the completions differ from problem to problem
    assert [_specials_removed(r["filtered_resps"][0], tokenizer) for r in theirs] == ours
    assert [r["score"] for r in theirs] == pytest.approx(result["problem_scores"])
    assert sum(r["accuracy"] for r in theirs) / PROBLEMS == pytest.approx(result["accuracy"])


def test_the_task_prompt_is_the_chat_prompt_lit_align_samples_from(export, tmp_path):
    folder, _, tokenizer = export
    task = write_task(str(folder), tmp_path, num_problems=2)
    import json

    rows = [json.loads(line) for line in (task / "countdown.jsonl").read_text().splitlines()]
    from lit_align.data.formats import prompt_ids

    for (origin, record), row in zip(countdown_problems(2, 1234), rows):
        assert tokenizer(row["prompt_text"], add_special_tokens=False)["input_ids"] == prompt_ids(record, origin, tokenizer)
    yaml = (task / "lit_align_countdown.yaml").read_text()
    assert "max_gen_toks: 160" in yaml and "do_sample: false" in yaml and '"<|im_end|>"' in yaml


def test_print_only_writes_the_task_and_prints_the_command(export, tmp_path, capsys):
    folder, _, _ = export
    assert main(["--model", str(folder), "--out", str(tmp_path / "o"), "--num-problems", "3", "--print-only"]) == 0
    printed = capsys.readouterr().out
    assert "-m lm_eval --model hf" in printed and "--tasks lit_align_countdown" in printed
    assert len((tmp_path / "o" / "task" / "countdown.jsonl").read_text().splitlines()) == 3
