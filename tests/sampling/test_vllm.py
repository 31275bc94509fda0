"""The vLLM rollout engine (``lit_align.sampling.engines.VLLM``): in sync with the policy after every step, and
drawing from softmax(z / T). Runs only where vLLM is installed (``-m vllm``, its own environment)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from lit_align.modeling import models, tiny  # noqa: E402
from lit_align.data.collate import collate_prompts  # noqa: E402
from lit_align.data.datamodule import AlignDataModule  # noqa: E402
from lit_align.data.formats import prompt_ids  # noqa: E402
from lit_align.sampling.generate import SamplingParams  # noqa: E402
from lit_align.methods.rloo import RLOO  # noqa: E402
from lit_align.modeling.models import LoRA  # noqa: E402
from lit_align.sampling.engines import VLLM  # noqa: E402

from conftest import CHI2_5_DOF_P001, ChatPrompts, LengthReward, engine_gap_recorder, first_token_chi2, tiny_llama_hd32  # noqa: E402

ENGINE = dict(memory_utilization=0.1, max_model_len=512, cpu_kv_cache_gib=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_hd32")
    tiny_llama_hd32(folder)
    return folder


Length, Prompts = LengthReward, ChatPrompts


class NoSync(VLLM):
    """The bug the sync exists to prevent: never told that the weights moved."""

    def weights_changed(self) -> None:
        pass


def _train(model_dir, engine: VLLM, lora: LoRA | None, steps: int = 3):
    torch.manual_seed(0)
    module = RLOO(model=str(model_dir), reward=Length(), rloo_k=2, lora=lora, rollout=engine,
                  generation=SamplingParams(max_new_tokens=8, temperature=0.7),
                  optimizer=lambda p: torch.optim.Adam(p, lr=5e-2))
    gaps = engine_gap_recorder()
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
              callbacks=[gaps]).fit(module, AlignDataModule(Prompts(), batch_size=2).connect(module.tokenizer, module.batch_kind))
    return gaps.gaps, engine.syncs


@pytest.mark.parametrize("lora", [None, LoRA(r=4, alpha=8, dropout=0.0)], ids=["full", "lora"])
def test_the_engine_samples_from_the_current_policy_after_every_step(model_dir, lora):
    """Float32 on both sides: the engine's log-probs of its own tokens match the policy's to 1e-3
    nats/token at every step, because the weights were pushed before each sampling (not before the first)."""
    gaps, syncs = _train(model_dir, VLLM(**ENGINE), lora)
    assert len(gaps) == 3 and syncs == 2
    assert max(gaps) <= 1e-3, gaps


def test_a_skipped_sync_is_caught_by_the_same_check(model_dir):
    gaps, syncs = _train(model_dir, NoSync(**ENGINE), LoRA(r=4, alpha=8, dropout=0.0))
    assert syncs == 0 and gaps[0] <= 1e-3
    assert min(gaps[1:]) > 1e-3, gaps


def test_sharded_weights_are_copied_inside_the_gather_context(model_dir, monkeypatch):
    """Under FSDP a rank holds a shard outside ``summon_full_params``: the engine must read the weights,
    at its start and at every sync, only inside the context the method hands it. (Lightning refuses FSDP
    on CPUs, so here a counting context stands in for the gathering.)"""
    import contextlib

    import lit_align.sampling.engines as rollout_module

    state = {"inside": False, "entered": 0, "reads_outside": 0}

    @contextlib.contextmanager
    def gather():
        state["inside"], state["entered"] = True, state["entered"] + 1
        try:
            yield
        finally:
            state["inside"] = False

    real = rollout_module.merged_weights

    def watched(model):
        for item in real(model):
            state["reads_outside"] += not state["inside"]
            yield item

    monkeypatch.setattr(rollout_module, "merged_weights", watched)
    engine = VLLM(**ENGINE)

    class Gathered(L.Callback):
        def on_fit_start(self, trainer, module):  # after the method's own hook, as FSDP would set it
            module.rollout.gather_weights_with(gather)

    torch.manual_seed(0)
    module = RLOO(model=str(model_dir), reward=Length(), rloo_k=2, rollout=engine,
                  generation=SamplingParams(max_new_tokens=8, temperature=0.7),
                  optimizer=lambda p: torch.optim.Adam(p, lr=5e-2))
    L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
              callbacks=[Gathered()]).fit(module, AlignDataModule(Prompts(), batch_size=2).connect(module.tokenizer, module.batch_kind))
    assert engine.syncs == 2 and state["entered"] == 3  # the start and two syncs
    assert state["reads_outside"] == 0


def test_first_token_frequencies_follow_softmax_over_temperature(model_dir):
    """Chi-squared over the five likeliest tokens and the rest, 4,000 draws at T = 0.7."""
    tokenizer, model = models.load_tokenizer(str(model_dir)), models.load_causal_lm(str(model_dir))
    assert first_token_chi2(VLLM(**ENGINE), model, tokenizer) < CHI2_5_DOF_P001


def test_the_study_chain_runs_with_vllm_rollouts(tmp_path):
    """Every configs/paper/ run on the stand-ins, each sampling stage through the vLLM engine; the
    RLOO stages' engine log-probs match their policies' after the first optimiser step."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "tools/reproduce.py", "--profile", "paper-smoke", "--out", str(tmp_path / "runs"),
           "--results", str(tmp_path / "results.md"), "--rollout-config", "configs/rollout/vllm.yaml"]
    done = subprocess.run(cmd, cwd=root, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "runs"
    sampling = [d for d in runs.iterdir() if "rloo" in d.name or "eval" in d.name or "best_of_n" in d.name]
    assert len(sampling) >= 10
    for folder in sampling:
        engine = yaml.safe_load((folder / "config.yaml").read_text())["model"]["init_args"]["rollout"]
        assert engine["class_path"] == "lit_align.sampling.engines.VLLM", folder.name
    for name in ("instruction_rloo_rm", "instruction_rloo_checker", "countdown_rloo"):
        rows = list(csv.DictReader(open(next((runs / name).glob("logs/version_*/metrics.csv")))))
        gaps = [float(r["train/engine_logprob_gap"]) for r in rows if r.get("train/engine_logprob_gap")]
        assert len(gaps) == 2 and max(gaps) <= 1e-3, (name, gaps)


@pytest.mark.parametrize("config", [
    "quickstart.yaml", "rloo/countdown_embedded.yaml", "rloo/rm_embedded.yaml", "rloo/instruction_rm_embedded.yaml",
    "rloo/instruction_checker_embedded.yaml", "eval/countdown_best_of_n.yaml", "eval/instruction_embedded.yaml",
])
def test_each_sampling_config_runs_with_the_vllm_override(config, tmp_path, monkeypatch):
    """One step (or one evaluation batch) of each CPU config that samples, through configs/rollout/vllm.yaml,
    on the Qwen stand-in (vLLM's CPU kernels need heads at least 32 wide)."""
    from pathlib import Path

    from lit_align.cli import main
    from test_configs import _data_overrides

    configs = Path(__file__).resolve().parents[2] / "configs"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").symlink_to(configs.parent / "docs")
    evaluation = config.startswith("eval/")
    cli = main([
        "test" if evaluation else "fit", "--config", str(configs / config), "--config", str(configs / "trainer" / "cpu.yaml"),
        "--config", str(configs / "rollout" / "vllm.yaml"), "--model.init_args.rollout.init_args.cpu_kv_cache_gib", "1",
        "--model.init_args.model", "tiny:qwen2", "--trainer.fast_dev_run", "1", "--trainer.logger", "false",
        "--data.limit", "4", *_data_overrides(configs / config),
    ])
    assert isinstance(cli.model.rollout, VLLM) and cli.model.rollout.llm is None, "closed at the end of the run"
    assert cli.trainer.callback_metrics if evaluation else cli.trainer.global_step == 1


@pytest.mark.parametrize("config", ["pairs/countdown_embedded.yaml", "pairs/instruction_embedded.yaml"])
def test_the_pairs_tool_runs_with_the_vllm_override(config, tmp_path):
    from pathlib import Path

    from lit_align.pairs import main

    configs = Path(__file__).resolve().parents[2] / "configs"
    counts = main(["--config", str(configs / config), "--config", str(configs / "rollout" / "vllm_pairs.yaml"),
                   "--rollout.init_args.cpu_kv_cache_gib", "1", "--model", "tiny:qwen2", "--limit", "2",
                   "--generation.max_new_tokens", "8", "--output", str(tmp_path / "pairs.jsonl")])
    assert counts["prompts"] == 2 and counts["completions"] > counts["prompts"]


def test_under_ddp_each_rank_samples_from_its_own_synced_engine(tmp_path):
    """Two CPU ranks (gloo), each with its own engine on its shard of prompts; after the first
    optimiser step rank 0's engine still matches its policy."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    cmd = [sys.executable, "-m", "lit_align", "fit", "--config", str(configs / "rloo" / "countdown_embedded.yaml"),
           "--config", str(configs / "rollout" / "vllm.yaml"), "--model.init_args.rollout.init_args.cpu_kv_cache_gib", "1",
           "--model.init_args.model", "tiny:qwen2", "--model.init_args.generation.max_new_tokens", "8",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "2",
           "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--trainer.log_every_n_steps", "1",
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path),
           "--data.limit", "8"]
    # Engines started earlier in this process leave their settings in os.environ (VLLM_DIST_IDENT,
    # LOCAL_WORLD_SIZE=1, ...). Inherited, the ranks' engines logged nothing in a full `-m vllm` run (the
    # test passed alone); the run starts from the environment a user's shell would give it.
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_") and k != "LOCAL_WORLD_SIZE"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("non-default args") + done.stderr.count("non-default args") == 2, "one engine per rank"
    rows = list(csv.DictReader(open(next(tmp_path.glob("**/version_*/metrics.csv")))))
    gaps = [float(r["train/engine_logprob_gap"]) for r in rows if r.get("train/engine_logprob_gap")]
    assert len(gaps) == 2 and max(gaps) <= 1e-3, gaps


def test_a_row_cut_by_max_model_len_stays_truncated_on_the_qwen_layout():
    """Qwen2.5 base pads with <|endoftext|>, a stop token. A long prompt leaves room for 8 new tokens under
    max_model_len, a short one for all 16: the cut row is padded to the short row's width, and must stay
    truncated with exactly its 8 tokens in the mask (no phantom end token from the padding)."""
    from lit_align.data.formats import stop_token_ids

    tokenizer, model = models.load_tokenizer("tiny:qwen2"), models.load_causal_lm("tiny:qwen2")
    assert tokenizer.pad_token_id in stop_token_ids(tokenizer)
    long = tokenizer(" ".join(["word"] * 40), add_special_tokens=False).input_ids[:24]
    short = long[:4]
    ids = torch.full((2, 24), tokenizer.pad_token_id)
    ids[0, -4:], ids[1] = torch.tensor(short), torch.tensor(long)
    mask = (torch.arange(24)[None, :] >= torch.tensor([[20], [0]])).long()
    engine = VLLM(**(ENGINE | {"max_model_len": 32}))
    try:
        samples = engine.sample(model, tokenizer, ids, mask, SamplingParams(max_new_tokens=16, temperature=1.0))
    finally:
        engine.close()
    lengths = samples.completion_mask.sum(-1).tolist()
    assert samples.completion_ids.size(1) > 8 and lengths[1] == 8, lengths  # padded wider than the cut row
    assert samples.truncated[1].item() is True
    assert (samples.completion_ids[1, 8:] == tokenizer.pad_token_id).all()


def test_the_trainer_keeps_its_threads_and_cores_after_the_engine_starts(model_dir, tmp_path):
    """vLLM's CPU backend asks for one torch thread for serving and makes ``torch.set_num_threads`` a no-op
    when it starts; the trainer in the same process keeps the threads and cores it had and can still set
    them. A fresh process with OMP_NUM_THREADS unset, as a user's."""
    import json
    import os
    import subprocess
    import sys

    script = f"""
import json, os, torch
from lit_align.modeling import models
from lit_align.sampling.engines import VLLM
from lit_align.sampling.generate import SamplingParams
torch.set_num_threads(2)
before = (torch.get_num_threads(), sorted(os.sched_getaffinity(0)))
tokenizer, model = models.load_tokenizer({str(model_dir)!r}), models.load_causal_lm({str(model_dir)!r})
ids = tokenizer(["hello there"], return_tensors="pt")
engine = VLLM(memory_utilization=0.1, max_model_len=512, cpu_kv_cache_gib=1)
engine.sample(model, tokenizer, ids.input_ids, ids.attention_mask, SamplingParams(max_new_tokens=4, temperature=1.0))
after = (torch.get_num_threads(), sorted(os.sched_getaffinity(0)))
torch.set_num_threads(1)  # the trainer can still change its threads (vLLM's CPU worker made this a no-op)
changed = torch.get_num_threads()
engine.close()
print("THREADS", json.dumps([before, after, changed]))
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after, changed = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("THREADS"))[8:])
    assert before[0] == 2 and after == before and changed == 1


@pytest.mark.slow  # the engine compiles its graphs first (about a minute on 2 cores)
def test_a_compiled_engine_samples_from_the_current_policy_after_every_step(model_dir):
    """The weights pushed in place reach a compiled engine too (``enforce_eager: false``, the benchmark's
    ``lit_align+vllm_compiled``): its graphs read the same parameters, so the same 1e-3 check holds."""
    gaps, syncs = _train(model_dir, VLLM(**ENGINE, enforce_eager=False), LoRA(r=4, alpha=8, dropout=0.0))
    assert len(gaps) == 3 and syncs == 2
    assert max(gaps) <= 1e-3, gaps
