import warnings
from pathlib import Path

import pytest
import torch

from lit_align.modeling import hardware, models


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


ENCODER_STAND_INS = {"tiny:deberta-v2": "DebertaV2ForSequenceClassification", "tiny:distilbert": "DistilBertForSequenceClassification"}
ULTRAFEEDBACK_SAMPLE = Path(__file__).parents[1] / "fixtures" / "ultrafeedback_binarized_sample.jsonl"


@pytest.mark.parametrize("name", sorted(ENCODER_STAND_INS))
def test_encoder_stand_in_reads_a_text_pair_and_scores_a_padded_batch(name):
    from lit_align.data.preference import reward_ids
    from lit_align.rewards.model import reward_scores

    tokenizer, model = models.load_tokenizer(name), models.load_sequence_classifier(name).eval()
    assert type(model).__name__ == ENCODER_STAND_INS[name] and model.config.num_labels == 1
    assert model.config.num_hidden_layers == 2  # DistilBERT maps the name onto its n_layers
    assert tokenizer.chat_template is None  # an encoder's tokenizer: the RM reads (prompt, response) as a text pair
    assert tokenizer.pad_token == "[PAD]" and model.config.pad_token_id == tokenizer.pad_token_id
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    ids, cut = reward_ids(prompt, [{"role": "assistant", "content": "Paris."}], tokenizer, 64)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert not cut and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    assert "<|im_start|>" not in tokenizer.decode(ids)
    short, long = ids[:5] + ids[-1:], ids
    batch = torch.full((2, len(long)), tokenizer.pad_token_id)
    batch[0, : len(short)], batch[1] = torch.tensor(short), torch.tensor(long)
    mask = (torch.arange(len(long)) < torch.tensor([[len(short)], [len(long)]])).long()
    with torch.no_grad():
        scores = reward_scores(model, batch, mask, unpad=False)
        alone = reward_scores(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long), unpad=False)
    assert scores.shape == (2,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert torch.allclose(scores[0], alone[0], atol=1e-5)  # padding is masked out, not scored


@pytest.mark.parametrize("name", sorted(ENCODER_STAND_INS))
def test_reward_model_trains_a_step_on_an_encoder_stand_in_and_its_export_loads_back(name, tmp_path):
    import lightning as L

    from lit_align.cli import connect
    from lit_align.data.datamodule import AlignDataModule
    from lit_align.data.sources import LocalFile
    from lit_align.methods.reward import RewardModel
    from lit_align.rewards.model import RewardModelScorer

    torch.manual_seed(0)
    rm = RewardModel(model=name, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    rm.configure_model()
    before = {k: v.clone() for k, v in rm.model.state_dict().items()}
    data = connect(AlignDataModule(LocalFile(str(ULTRAFEEDBACK_SAMPLE)), batch_size=4, max_length=64), rm)  # hands the RM its length
    L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(rm, data)
    assert rm.trainer.global_step == 1
    assert any(not torch.equal(before[k], v) for k, v in rm.model.state_dict().items())

    folder = rm.export(tmp_path / "rm")
    scorer = RewardModelScorer(str(folder))
    assert type(scorer.model).__name__ == ENCODER_STAND_INS[name] and scorer.max_length == 64
    assert scorer.tokenizer.chat_template is None
    prompts, responses = ["What is the capital of France?"] * 2, ["The capital of France is Paris.", "Berlin."]
    rm.model.eval()
    expected = torch.stack([rm.model(**rm.tokenizer(p, r, return_tensors="pt")).logits[0, 0] for p, r in zip(prompts, responses)])
    assert torch.allclose(scorer.score(prompts, responses), expected.detach(), atol=1e-5)


def test_unknown_tiny_name_and_an_encoder_asked_for_as_a_causal_lm_are_clear_errors():
    with pytest.raises(models.ModelLoadError, match="unknown tiny model 'tiny:bert'.*tiny:deberta-v2"):
        models.load_tokenizer("tiny:bert")
    with pytest.raises(models.ModelLoadError, match="not a causal language model"):
        models.load_causal_lm("tiny:distilbert")
    with pytest.raises(models.ModelLoadError, match="single scalar output"):
        models.load_sequence_classifier("tiny:deberta-v2", num_labels=3)


def test_the_tiny_encoder_tokenizer_is_the_same_in_every_call():
    """The reward-model stand-ins build their tokenizer and their model from two separate calls: a
    tokenizer that differed between calls (the library's WordPiece trainer breaks ties at random) gave
    the model a vocabulary smaller than the ids it was fed, and an intermittent "index out of range"."""
    from lit_align.modeling import tiny

    for lowercase in (True, False):
        vocabs = {tuple(sorted(tiny.wordpiece_tokenizer(lowercase=lowercase).get_vocab().items())) for _ in range(5)}
        assert len(vocabs) == 1
    tokenizer = models.load_tokenizer("tiny:deberta-v2")
    model = models.load_sequence_classifier("tiny:deberta-v2")
    ids = tokenizer("Write a short poem about the sea.", "The sea is wide.", return_tensors="pt").input_ids
    assert int(ids.max()) < model.config.vocab_size == len(tokenizer)
