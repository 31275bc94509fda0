"""DPO with each pair's prompt run once (``share_prompt``), as prompt trees or through the prompt's cache,
trains exactly as with every row run whole."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_align.cli import connect
from lit_align.data.collate import PreferenceBatch, collate_preference, split_at_responses
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.formats import IGNORE_INDEX, Example
from lit_align.data.preference import PreferenceExample
from lit_align.data.sources import LocalFile
from lit_align.methods.dpo import DPO, IPO, SigmoidDPO
from lit_align.modeling.models import LoRA
from lit_align.objectives import logprobs, prompt_tree, shared_prompt

from conftest import trainer

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "ultrafeedback_binarized_sample.jsonl")
LORA = LoRA(r=4, alpha=8, dropout=0.0)


@pytest.fixture
def no_trees(monkeypatch):
    """Prompt trees refused (as for an attention that takes no mask): DPO shares prompts through their cache."""
    monkeypatch.setattr(prompt_tree, "unsupported", lambda model, longest: "a test refuses prompt trees")


def _layout(share: bool, monkeypatch, layout: str) -> str:
    if share and layout == "cache":
        monkeypatch.setattr(prompt_tree, "unsupported", lambda model, longest: "a test refuses prompt trees")
    return layout if share else "rows"


def _module(share: bool | None, perturb: bool = True, **kwargs) -> DPO:
    """A DPO module whose trainable weights moved off the reference (the same draw for either setting)."""
    torch.manual_seed(0)
    module = DPO(model="tiny:causal-lm", share_prompt=share, **kwargs)
    module.configure_model()
    module.load_reference_copy()
    if perturb:
        with torch.no_grad():
            for p in module.policy.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
    module.log_dict = lambda *a, **k: None
    return module


def _fixture_batch(module: DPO, pairs: int = 4):
    dm = connect(AlignDataModule(LocalFile(FIXTURE), batch_size=pairs, max_length=128), module)
    dm.setup("fit")
    return collate_preference(dm.train_items[:pairs], module.tokenizer.pad_token_id)


def _awkward_batch() -> PreferenceBatch:
    """Pairs the collate rarely makes: a response with an unlabelled turn inside it and a token after its
    last label; a pair whose two prompts differ (two prompt groups); a response of one token."""
    def ex(prompt, response, labels=None):
        return Example(prompt + response, [IGNORE_INDEX] * len(prompt) + (labels or response), "x")

    p, q = [1, 40, 41, 42, 43], [1, 50, 51]
    pairs = [
        (ex(p, [60, 61, 62, 63, 64, 65], [60, 61, IGNORE_INDEX, IGNORE_INDEX, 64, IGNORE_INDEX]), ex(p, [70, 71, 72])),
        (ex(q, [80, 81, 82, 83]), ex(q + [52], [90, 91])),
        (ex(q, [30]), ex(q, [31, 32, 33, 34, 35, 36, 37])),
    ]
    return collate_preference([PreferenceExample(c, r, 1.0, 0.0, i) for i, (c, r) in enumerate(pairs)], pad_id=0)


def _loss_and_grads(module: DPO, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = module._shared_step(batch, "train")
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.policy.parameters() if p.requires_grad]


@pytest.mark.parametrize("layout", ["tree", "cache"])
@pytest.mark.parametrize("loss", [SigmoidDPO(beta=0.1), IPO(beta=0.1)], ids=["sigmoid", "ipo_token_mean"])
@pytest.mark.parametrize("setting", ["full-copy", "full-copy-checkpointed", "lora-adapter_off"])
@pytest.mark.parametrize("which", ["fixture", "awkward"])
def test_loss_and_gradients_equal_every_row_run_whole(loss, setting, which, layout, monkeypatch):
    kwargs = {"loss": loss, "nll_weight": 0.5}  # the NLL term reads the chosen rows' per-token log-probs
    if setting.startswith("lora"):
        kwargs |= {"lora": LORA, "reference": "adapter_off"}
    kwargs["gradient_checkpointing"] = setting.endswith("checkpointed")
    results = {}
    for share in (False, True):
        module = _module(share, **kwargs)
        batch = _fixture_batch(module) if which == "fixture" else _awkward_batch()
        expected = _layout(share, monkeypatch, layout)
        results[share] = _loss_and_grads(module, batch)
        assert module._prompt_layout(module.policy, batch) == expected
    (plain, plain_grads), (shared, shared_grads) = results[False], results[True]
    assert shared.item() == pytest.approx(plain.item(), abs=1e-5)
    assert plain.item() > 0.1, "weights moved off the reference: the loss reads every term"
    for a, b in zip(plain_grads, shared_grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in shared_grads)


def test_the_split_gives_every_pair_its_own_prompt_and_the_responses_their_labels():
    batch = _awkward_batch()
    rows = split_at_responses(batch)
    prompts = [r[m.bool()].tolist() for r, m in zip(rows.prompt_ids, rows.prompt_mask)]
    assert prompts == [[1, 40, 41, 42, 43]] * 2 + [[1, 50, 51], [1, 50, 51, 52], [1, 50, 51], [1, 50, 51]]
    spans = [r[m.bool()].tolist() for r, m in zip(rows.completion_ids, rows.completion_mask)]
    # the token after the chosen's last label is left out; its unlabelled inside turn stays, unlabelled
    assert spans[:2] == [[60, 61, 62, 63, 64], [70, 71, 72]] and spans[3] == [90, 91]
    assert rows.labelled[0].tolist()[:5] == [1, 1, 0, 0, 1]
    assert rows.labelled.sum().item() == (batch.labels[:, 1:] != IGNORE_INDEX).sum().item()
    groups = shared_prompt.prompt_groups(rows.prompt_ids, rows.prompt_mask)
    assert groups == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]


def _pairs_whole(groups: list[range]) -> bool:
    """Whether no prompt group splits a pair (rows 2i, 2i + 1)."""
    return all(g.start % 2 == 0 and g.stop % 2 == 0 for g in groups)


def test_the_collate_gives_both_responses_of_a_pair_one_prompt():
    module = DPO(model="tiny:causal-lm")
    batch = _fixture_batch(module, pairs=12)
    rows = split_at_responses(batch)
    groups = shared_prompt.prompt_groups(rows.prompt_ids, rows.prompt_mask)
    assert _pairs_whole(groups)
    # neighbouring pairs of one prompt (UltraFeedback has several per prompt) share its single run too
    assert len(groups) < batch.num_pairs


def _forwards(module: DPO, batch) -> list[tuple[int, int, bool]]:
    """(rows, tokens, whether it reads a prompt's cache) of each policy forward in one training step."""
    seen = []

    def record(_, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen.append((*kwargs["input_ids"].shape, cache is not None))

    hook = module.policy.register_forward_pre_hook(record, with_kwargs=True)
    try:
        module._shared_step(batch, "train").backward()
    finally:
        hook.remove()
    return seen


def test_each_pair_runs_its_prompt_once_through_its_cache(monkeypatch, no_trees):
    # no fixed cost per forward: rows are never padded, so every token forwarded is counted exactly
    monkeypatch.setattr(shared_prompt, "default_group_overhead", lambda device: 0)
    monkeypatch.setattr(logprobs, "default_group_overhead", lambda device: 0)
    module = _module(True)
    batch = _fixture_batch(module, pairs=6)
    rows = split_at_responses(batch)
    groups = shared_prompt.prompt_groups(rows.prompt_ids, rows.prompt_mask)
    assert _pairs_whole(groups) and len(groups) >= 3
    seen = _forwards(module, batch)
    prompts = [(1, int(rows.prompt_mask[g.start].sum())) for g in groups]
    assert [s[:2] for s in seen if not s[2]] == prompts, "one prompt forward a group of pairs, in order"
    # each response runs after the prompt's cache, all its tokens but its last (which predicts nothing)
    assert sum(s[0] * s[1] for s in seen if s[2]) == int((rows.completion_mask.sum(1) - 1).sum())
    whole = _forwards(_module(False), batch)
    assert not any(s[2] for s in whole)
    assert sum(s[0] * s[1] for s in whole) == int(batch.attention_mask.sum())  # every row whole, its prompt included


def test_each_pair_runs_its_prompt_once_as_a_tree(monkeypatch):
    monkeypatch.setattr(prompt_tree, "default_group_overhead", lambda device: 10**9)  # every tree in one forward
    module = _module(True)
    batch = _fixture_batch(module, pairs=6)
    seen = _forwards(module, batch)
    trees = prompt_tree.Trees(batch.input_ids, batch.attention_mask, batch.labels, [[i, 6 + i] for i in range(6)])
    assert seen == [(6, max(trees.sizes()), False)], "one forward, a pair a row, no prompt cache"
    prompts = split_at_responses(batch).prompt_mask[::2].sum().item()  # a pair's prompt (rows 2i, 2i + 1 share it)
    assert sum(trees.sizes()) == int(batch.attention_mask.sum()) - prompts


def test_share_prompt_defaults_to_trees_on_cpu():
    module = _module(None)
    assert module._prompt_layout(module.policy, _fixture_batch(module)) == "tree"


@pytest.mark.parametrize("trees", [True, False])
def test_wrapped_blocks_run_trees_or_else_whole_rows_and_say_why(trees, caplog, monkeypatch):
    """Blocks wrapped for activation checkpointing would replay a block into the prompt's cache; a prompt tree is
    one plain forward, so it runs as usual; without trees, rows run whole."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    results = {}
    for share in (False, True):
        expected = _layout(share, monkeypatch, "tree" if trees else "cache")
        module = _module(share)
        apply_activation_checkpointing(module.policy, check_fn=lambda m: type(m).__name__.endswith("DecoderLayer"))
        batch = _fixture_batch(module)
        with caplog.at_level(logging.WARNING, logger="lit_align.methods.dpo"):
            results[share] = _loss_and_grads(module, batch)
    assert module._prompt_layout(module.policy, batch) == ("tree" if trees else "rows")
    said = "runs every row whole" in caplog.text and "activation checkpointing" in caplog.text
    assert said is not trees and (expected == "tree") is trees
    assert results[True][0].item() == pytest.approx(results[False][0].item(), abs=1e-5)
    for a, b in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["tree", "cache"])
@pytest.mark.parametrize("reference", ["copy", "adapter_off", "precomputed"])
def test_training_with_each_reference_matches_the_plain_path(reference, layout, tmp_path, monkeypatch):
    def fit(share: bool) -> dict[str, torch.Tensor]:
        expected = _layout(share, monkeypatch, layout)
        torch.manual_seed(0)
        kwargs = {"lora": LORA, "reference": "adapter_off"} if reference == "adapter_off" else {}
        module = DPO(model="tiny:causal-lm", share_prompt=share, precompute_reference=reference == "precomputed",
                     reference_cache_dir=str(tmp_path / f"cache_{share}"), nll_weight=0.5,
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)
        dm = connect(AlignDataModule(LocalFile(FIXTURE), batch_size=4, max_length=128), module)
        trainer(max_steps=3, limit_val_batches=0).fit(module, dm)
        assert module._prompt_layout(module.policy, next(iter(dm.train_dataloader()))) == expected
        return {k: v.clone() for k, v in module.policy.state_dict().items()}

    plain, shared = fit(False), fit(True)
    start = _module(False, perturb=False, **({"lora": LORA} if reference == "adapter_off" else {}))
    assert any(not torch.allclose(v, plain[k]) for k, v in start.policy.state_dict().items()), "the weights trained"
    for key, value in plain.items():
        torch.testing.assert_close(shared[key], value, atol=1e-5, rtol=1e-5)


def _fsdp_fit(folder: Path, share: bool) -> subprocess.CompletedProcess:
    """Three DPO steps of the LoRA policy sharded over two CPU processes (``fault_injection.CPUFSDP``)."""
    root = Path(__file__).resolve().parents[2]
    config = {
        "seed_everything": 3,
        "trainer": {"accelerator": "cpu", "devices": 2, "precision": "32-true", "max_steps": 3,
                    "strategy": {"class_path": "fault_injection.CPUFSDP", "init_args": {"activation_checkpointing": False}},
                    "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "default_root_dir": str(folder),
                    "callbacks": [{"class_path": "fault_injection.GlobalLossCurve",
                                   "init_args": {"path": str(folder / "losses.json")}}]},
        "model": {"class_path": "lit_align.methods.DPO", "init_args": {
            "model": "tiny:causal-lm", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "reference": "adapter_off",
            "share_prompt": share, "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}}},
        "data": {"train": {"class_path": "lit_align.data.sources.LocalFile", "init_args": {"path": FIXTURE}},
                 "batch_size": 2, "max_length": 256},
    }
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "tests"), str(root)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(folder / "config.yaml")],
                          env=env, capture_output=True, text=True, timeout=180, cwd=folder)


@pytest.mark.slow  # two processes, ~45 s: CI runs it with the slow tests
def test_under_fsdp_prompt_trees_train_alike(tmp_path):
    """FSDP gathers each block's weights in a collective at every forward, so ranks must run as many forwards as
    one another: prompt trees run a batch as one forward on every rank, and train as whole rows do."""
    runs = {share: _fsdp_fit(tmp_path / f"share_{share}", share) for share in (False, True)}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-3000:]
        assert "runs every row whole" not in run.stderr and "through their cache" not in run.stderr
    plain, shared = (json.loads((tmp_path / f"share_{s}" / "losses.json").read_text()) for s in (False, True))
    assert len(plain) == 3 and len(set(plain)) > 1
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(plain), atol=1e-6, rtol=1e-6)


def test_under_fsdp_without_trees_rows_run_whole_and_the_log_says_why(monkeypatch, no_trees, caplog):
    """Without trees the prompt cache would run a number of forwards that follows each rank's prompts: under FSDP
    (whose block forwards are collectives) rows run whole instead."""
    from lit_align.modeling import models

    module = _module(True)
    monkeypatch.setattr(models, "fsdp_sharded", lambda model: True)
    with caplog.at_level(logging.WARNING, logger="lit_align.methods.dpo"):
        assert module._prompt_layout(module.policy, _fixture_batch(module)) == "rows"
    assert "runs every row whole" in caplog.text and "FSDP shards its blocks" in caplog.text
