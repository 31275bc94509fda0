import warnings

import pytest
import torch

from lit_align import hardware, models


def test_unreachable_hub_id_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(models.ModelLoadError) as err:
        models.load_causal_lm("Qwen/Qwen2.5-0.5B")
    message = str(err.value)
    assert "Qwen/Qwen2.5-0.5B" in message and "local" in message and "embedded:" in message
    with pytest.raises(models.ModelLoadError, match="Qwen/Qwen2.5-0.5B"):
        models.load_tokenizer("Qwen/Qwen2.5-0.5B")


def test_unknown_embedded_name_lists_known_ones():
    with pytest.raises(models.ModelLoadError, match="smollm2-135m-instruct"):
        models.load_causal_lm("embedded:nope")


def test_local_folder_round_trip(tmp_path, tokenizer, tiny_lm):
    tiny_lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = models.load_causal_lm(str(tmp_path))
    ids = torch.tensor([[1, 5, 6]])
    assert torch.allclose(loaded(input_ids=ids).logits, tiny_lm(input_ids=ids).logits)
    assert models.load_tokenizer(str(tmp_path)).chat_template == tokenizer.chat_template


def test_bad_dtype_is_named():
    with pytest.raises(ValueError, match="float64"):
        models.torch_dtype("float64")


def test_bf16_on_a_cpu_without_bf16_units_warns_and_not_on_one_with_them(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("only meaningful without a GPU")
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda cpuinfo=None: False)
    with pytest.warns(UserWarning, match="bf16"):
        models.torch_dtype("bfloat16")
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda cpuinfo=None: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models.torch_dtype("bfloat16") == torch.bfloat16


def test_lora_freezes_base_and_trains_adapters(tiny_lm):
    wrapped = models.apply_lora(tiny_lm, models.LoRA(r=2, alpha=4))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_qlora_loads_nf4_base_and_trains_adapters_on_cpu(tmp_path, tokenizer, tiny_lm):
    """QLoRA's code path (bitsandbytes NF4 base + LoRA) runs on CPU with bitsandbytes >= 0.45."""
    pytest.importorskip("bitsandbytes")
    tiny_lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = models.load_causal_lm(str(tmp_path), load_in_4bit=True)
    assert getattr(model, "is_loaded_in_4bit", False)
    model = models.apply_lora(model, models.LoRA(r=2, alpha=4, dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(trainable, lr=1.0).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))
