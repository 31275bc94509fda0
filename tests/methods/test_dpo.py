import math
from pathlib import Path

import pytest
import torch

from lit_align.cli import connect
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.sources import DataError, LocalFile
from lit_align.methods.dpo import DPO, IPO, ConservativeDPO, SigmoidDPO
from lit_align.modeling.models import LoRA

from conftest import trainer

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "ultrafeedback_binarized_sample.jsonl")


def data(module, batch_size=4, test=None):
    dm = AlignDataModule(LocalFile(FIXTURE), val=LocalFile(FIXTURE), test=test, batch_size=batch_size, max_length=128)
    return connect(dm, module)


@pytest.mark.parametrize("reference, lora", [("copy", None), ("adapter_off", LoRA(r=4, alpha=8, dropout=0.0))])
def test_first_loss_is_log2_when_policy_equals_reference(reference, lora):
    module = DPO(model="tiny:causal-lm", reference=reference, lora=lora)
    metrics = trainer().validate(module, data(module), verbose=False)[0]
    assert metrics["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["val/rewards/margin"] == pytest.approx(0.0, abs=1e-6)


def test_adapter_off_reference_needs_lora():
    with pytest.raises(ValueError, match="LoRA"):
        DPO(model="tiny:causal-lm", reference="adapter_off")


def fit_weights(tmp_path, precompute, steps=4, test=None):
    torch.manual_seed(0)
    module = DPO(model="tiny:causal-lm", precompute_reference=precompute, reference_cache_dir=str(tmp_path / "cache"),
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    dm = data(module, test=test)
    trainer(max_steps=steps, limit_val_batches=0).fit(module, dm)
    return module, dm


def test_precomputed_reference_matches_on_the_fly(tmp_path):
    live, _ = fit_weights(tmp_path, precompute=False)
    cached, _ = fit_weights(tmp_path, precompute=True)
    assert cached.reference_model is None, "the frozen copy is freed once its log-probs are cached"
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1  # keyed by content: the train and val splits here hold the same pairs
    for key, value in live.policy.state_dict().items():
        assert torch.allclose(value, cached.policy.state_dict()[key], atol=1e-5), key
    again, _ = fit_weights(tmp_path, precompute=True)  # second run reads the cache
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert all(torch.allclose(v, again.policy.state_dict()[k], atol=1e-5) for k, v in cached.policy.state_dict().items())


def test_precompute_without_the_data_handed_over_is_a_clear_error(tmp_path):
    module = DPO(model="tiny:causal-lm", precompute_reference=True, reference_cache_dir=str(tmp_path))
    dm = AlignDataModule(LocalFile(FIXTURE), batch_size=4, max_length=128).connect(module.tokenizer, module.batch_kind)
    with pytest.raises(ValueError, match=r"precompute_reference needs the pairs.*connect\(data, dpo\)"):
        trainer(max_steps=1, limit_val_batches=0).fit(module, dm)


def test_test_split_is_its_own_after_a_cached_fit(tmp_path):
    """The test split's pairs, scored against the live reference even when train and val were cached."""
    lines = Path(FIXTURE).read_text().splitlines()
    held_out = tmp_path / "test.jsonl"
    # the last pairs, in reverse: their positions name other pairs in the cached val split
    held_out.write_text("\n".join(lines[::-1][:5]) + "\n")
    results = {}
    for precompute in (False, True):
        module, dm = fit_weights(tmp_path, precompute, test=LocalFile(str(held_out)))
        results[precompute] = trainer().test(module, dm, verbose=False)[0]
    assert results[True]["test/loss"] == pytest.approx(results[False]["test/loss"], abs=1e-5)
    assert results[True]["test/rewards/margin"] == pytest.approx(results[False]["test/rewards/margin"], abs=1e-5)
    assert results[False]["test/rewards/margin"] != pytest.approx(0.0, abs=1e-4), "weights moved off the reference"
    unconnected = DPO(model="tiny:causal-lm")
    with pytest.raises(DataError, match="no test split: set data.test"):
        trainer().test(unconnected, data(unconnected), verbose=False)


@pytest.mark.parametrize("loss", [SigmoidDPO(beta=0.1), IPO(beta=0.1), ConservativeDPO(beta=0.1, label_smoothing=0.1)])
def test_dpo_raises_reward_margin_and_accuracy(loss):
    # No NLL term (nll_weight 0): an NLL on the chosen responses alone raises the margin, so the gain
    # here must come from the preference objective's own gradient.
    torch.manual_seed(0)
    module = DPO(model="tiny:causal-lm", loss=loss, nll_weight=0.0, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    dm = data(module)
    start = trainer().validate(module, dm, verbose=False)[0]
    trainer(max_steps=15, limit_val_batches=0).fit(module, dm)
    end = trainer().validate(module, dm, verbose=False)[0]
    assert end["val/rewards/margin"] > start["val/rewards/margin"] + 0.1
    assert end["val/rewards/accuracy"] > 0.9 and start["val/rewards/accuracy"] == 0.0


def _train_mode_logps_twice(module_cls, **kwargs):
    """Two train-mode forwards of a LoRA policy whose adapters are non-zero (LoRA B starts at zero)."""
    module = module_cls(model="tiny:causal-lm", lora=LoRA(r=4, alpha=8, dropout=0.5), **kwargs)
    module.configure_model()
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    module.policy.train()
    ids = torch.arange(5, 25).view(2, 10)
    with torch.no_grad():
        return module.policy(input_ids=ids).logits, module.policy(input_ids=ids).logits


@pytest.mark.parametrize("method", ["DPO", "RLOO"])
def test_dropout_is_off_by_default_for_dpo_and_rloo_and_can_be_kept(method):
    from lit_align.methods.rloo import RLOO
    from lit_align.tasks.countdown import CountdownVerifier

    cls, extra = (DPO, {}) if method == "DPO" else (RLOO, {"reward": CountdownVerifier()})
    a, b = _train_mode_logps_twice(cls, **extra)
    assert torch.equal(a, b), "no dropout: two train-mode forwards agree"
    a, b = _train_mode_logps_twice(cls, disable_dropout=False, **extra)
    assert not torch.equal(a, b), "the switch keeps LoRA's dropout"


def test_ipo_averages_log_probs_per_token_by_default():
    """IPO's h from per-token means (the default) or sums, against the formula on the same log-probs."""
    from lit_align.objectives import logprobs, ops
    from lit_align.data.collate import collate_preference

    beta = 0.1
    for normalization in ("token_mean", "sum"):
        torch.manual_seed(0)
        module = DPO(model="tiny:causal-lm", loss=IPO(beta=beta, normalization=normalization))
        module.configure_model()
        with torch.no_grad():  # move the policy off the reference, so h is not zero
            for p in module.policy.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        dm = data(module, batch_size=4)
        dm.setup("fit")
        batch = collate_preference(dm.train_items[:4], module.tokenizer.pad_token_id)
        module.log_dict = lambda *a, **k: None
        loss = module._shared_step(batch, "train")
        with torch.no_grad():
            pol = logprobs.model_token_logprobs(module.policy, batch.input_ids, batch.attention_mask, batch.labels)[0].sum(-1)
            ref = logprobs.model_token_logprobs(module.reference_model, batch.input_ids, batch.attention_mask, batch.labels)[0].sum(-1)
        n = ops.loss_mask(batch.labels).sum(-1)
        if normalization == "token_mean":
            pol, ref = pol / n, ref / n
        h = (pol[:4] - ref[:4]) - (pol[4:] - ref[4:])
        assert loss.item() == pytest.approx(((h - 1 / (2 * beta)) ** 2).mean().item(), rel=1e-5)
        assert (n[:4] != n[4:]).any(), "lengths must differ for the two normalisations to differ"
