"""The README's quickstart, end to end on the real embedded model (about 5 minutes on 2 cores)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.embedded
def test_quickstart_improves_countdown_and_exports(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "lit_align", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "before training: mean verifier score" in run.stdout and "after training" in run.stdout
    figures = json.loads((tmp_path / "outputs/quickstart/countdown_eval.json").read_text())
    assert figures["after"]["score"] > figures["before"]["score"], figures
    assert figures["after"]["against_before"]["score_interval_clears_before"], figures["after"]["against_before"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = tmp_path / "outputs/quickstart/export"
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Make 10 from 2, 5."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert torch.isfinite(model(**prompt).logits).all()
