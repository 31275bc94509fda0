import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.data.datamodule import AlignDataModule
from lit_align.methods import SFT
from lit_align.modeling.models import LoRA

from in_memory import InMemory
from conftest import trainer

WORDS = "the quick brown fox jumps over the lazy dog hello world good bad yes no".split()


def records(n=16):
    # Completions of different lengths, so per-micro-batch means differ from the global mean.
    return [
        {"messages": [{"role": "user", "content": WORDS[i % 7]}, {"role": "assistant", "content": " ".join(WORDS[: 1 + i % 9])}]}
        for i in range(n)
    ]


def sgd(params):
    return torch.optim.SGD(params, lr=0.5)


def one_step_weights(batch_size, accumulate):
    torch.manual_seed(0)
    module = SFT(model="tiny:causal-lm", optimizer=sgd, scheduler=lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, 1.0))
    data = AlignDataModule(InMemory(records(8)), batch_size=batch_size, seed=0).connect(module.tokenizer, module.batch_kind)
    trainer(max_steps=1, accumulate_grad_batches=accumulate, limit_val_batches=0).fit(module, data)
    return {k: v.clone() for k, v in module.policy.state_dict().items()}


def test_gradient_accumulation_equals_one_big_batch():
    big = one_step_weights(batch_size=4, accumulate=1)
    small = one_step_weights(batch_size=2, accumulate=2)
    init = SFT(model="tiny:causal-lm")
    init.configure_model()
    moved = 0
    for key, value in big.items():
        assert torch.allclose(value, small[key], atol=1e-5), key
        moved += not torch.equal(value, init.policy.state_dict()[key])
    assert moved > 0, "the step must have changed weights"


def test_sft_lowers_loss_and_changes_weights():
    torch.manual_seed(0)
    module = SFT(model="tiny:causal-lm", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    data = AlignDataModule(InMemory(records(16)), val=InMemory(records(16)), batch_size=8).connect(module.tokenizer, module.batch_kind)
    module.configure_model()
    before = copy.deepcopy(module.policy.state_dict())
    first = trainer().validate(module, data, verbose=False)[0]["val/loss"]
    trainer(max_steps=30, limit_val_batches=0).fit(module, data)
    last = trainer().validate(module, data, verbose=False)[0]["val/loss"]
    assert last < 0.7 * first, (first, last)
    assert any(not torch.equal(before[k], v) for k, v in module.policy.state_dict().items())


def test_lora_export_loads_back_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    module = SFT(model="tiny:causal-lm", lora=LoRA(r=4, alpha=8, dropout=0.0), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    data = AlignDataModule(InMemory(records(8)), batch_size=4).connect(module.tokenizer, module.batch_kind)
    trainer(max_steps=3, limit_val_batches=0).fit(module, data)
    module.export(tmp_path / "export")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert not any("lora" in k for k in loaded.state_dict())
    ids = torch.tensor([[1, 2, 40, 41, 42, 3]])
    module.policy.eval()
    with torch.no_grad():
        expected = module.policy(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    base = SFT(model="tiny:causal-lm")
    base.configure_model()
    with torch.no_grad():
        assert not torch.allclose(base.policy(input_ids=ids).logits, got, atol=1e-4), "LoRA must have been merged"


def test_policy_trains_in_train_mode():
    module = SFT(model="tiny:causal-lm")
    module.configure_model()
    assert all(m.training for m in module.policy.modules())


def test_qlora_requires_lora():
    with pytest.raises(ValueError, match="lora"):
        SFT(model="tiny:causal-lm", load_in_4bit=True)


def test_gradient_checkpointing_gives_the_same_step():
    def weights(checkpointing):
        torch.manual_seed(0)
        module = SFT(model="tiny:causal-lm", gradient_checkpointing=checkpointing, optimizer=sgd)
        trainer(max_steps=1, limit_val_batches=0).fit(module, AlignDataModule(InMemory(records(4)), batch_size=4).connect(module.tokenizer, module.batch_kind))
        assert module.policy.is_gradient_checkpointing == checkpointing
        return module.policy.state_dict()

    plain, checkpointed = weights(False), weights(True)
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
