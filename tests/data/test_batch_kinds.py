"""Every batch kind, built by the data module alone: no method, no trainer, only ``connect``."""

import pytest
import torch

from lit_align.data.collate import PreferenceBatch, PromptBatch, SFTBatch
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.formats import IGNORE_INDEX, prompt_ids, prompt_text_ids
from lit_align.data.kinds import PreferenceKind, PromptKind, RewardKind, SFTKind
from lit_align.rewards.base import Reward, score_samples

from in_memory import InMemory


def _connected(records, tokenizer, kind, **kw):
    data = AlignDataModule(InMemory(records), val=InMemory(records), **kw).connect(tokenizer, kind)
    data.setup("fit")
    return data


def _pairs(n):
    return [{"prompt": f"question {i}", "chosen": "yes " * (1 + i), "rejected": "no"} for i in range(n)]


def test_sft_batches_carry_loss_on_completion_tokens_only(tokenizer):
    records = [{"prompt": f"hello {i}", "completion": "world " * (1 + i)} for i in range(4)]
    data = _connected(records, tokenizer, SFTKind(), batch_size=4)
    batch = next(iter(data.val_dataloader()))
    assert isinstance(batch, SFTBatch)
    lengths = [len(e.input_ids) for e in data.val_items]
    assert batch.input_ids.shape == batch.labels.shape == (4, max(lengths))
    for row, (record, length) in enumerate(zip(records, lengths)):
        n_prompt = len(prompt_text_ids(record["prompt"], tokenizer))
        assert (batch.labels[row, :n_prompt] == IGNORE_INDEX).all(), "prompt tokens carry no loss"
        assert torch.equal(batch.labels[row, n_prompt:length], batch.input_ids[row, n_prompt:length])
        assert batch.labels[row, length - 1] == tokenizer.eos_token_id
        assert (batch.labels[row, length:] == IGNORE_INDEX).all() and (batch.attention_mask[row, length:] == 0).all()
    assert batch.loss_normalizer == batch.num_loss_tokens == sum(e.num_loss_tokens for e in data.val_items)


def test_preference_batches_stack_chosen_over_rejected_with_loss_on_responses(tokenizer):
    data = _connected(_pairs(3), tokenizer, PreferenceKind(), batch_size=3)
    batch = next(iter(data.val_dataloader()))
    assert isinstance(batch, PreferenceBatch) and batch.num_pairs == 3
    assert batch.input_ids.shape[0] == 6 and batch.index.tolist() == [0, 1, 2]
    for i, record in enumerate(_pairs(3)):
        n_prompt = len(prompt_text_ids(record["prompt"], tokenizer))
        for row, response in ((i, record["chosen"]), (3 + i, record["rejected"])):
            assert batch.input_ids[row, :n_prompt].tolist() == prompt_text_ids(record["prompt"], tokenizer)
            assert (batch.labels[row, :n_prompt] == IGNORE_INDEX).all(), "prompt tokens carry no loss"
            learned = [t for t in batch.labels[row].tolist() if t != IGNORE_INDEX]
            assert tokenizer.decode(learned, skip_special_tokens=True) == response


def test_reward_batches_hold_both_responses_without_labels(tokenizer):
    data = _connected(_pairs(4), tokenizer, RewardKind(), batch_size=4, max_length=64)
    batch = next(iter(data.val_dataloader()))
    assert isinstance(batch, PreferenceBatch) and batch.input_ids.shape[0] == 8
    assert (batch.labels == IGNORE_INDEX).all(), "a reward model's batches need no labels"
    assert batch.index.tolist() == [0, 1, 2, 3] and batch.input_ids.shape[1] <= 64


def test_prompt_batches_are_left_padded_and_carry_the_prompts(tokenizer):
    records = [{"prompt": "hi"}, {"prompt": [{"role": "user", "content": "the quick brown fox"}]},
               {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]}]
    data = _connected(records, tokenizer, PromptKind(), batch_size=3)
    batch = next(iter(data.val_dataloader()))
    assert isinstance(batch, PromptBatch) and batch.records == records
    assert batch.prompts == ["hi", records[1]["prompt"], [{"role": "user", "content": "hello"}]]
    assert (batch.attention_mask[:, -1] == 1).all(), "left padding: every prompt ends at the last column"
    for row, record in enumerate(records):
        ids = prompt_ids(record, "r", tokenizer)
        assert batch.input_ids[row, -len(ids):].tolist() == ids and batch.attention_mask[row].sum() == len(ids)


def test_score_samples_reads_the_prompts_the_batch_carries(tokenizer):
    class Seen(Reward):
        def __call__(self, prompts, completions, records):
            self.prompts = prompts
            return torch.zeros(len(completions))

    records = [{"prompt": "a"}, {"messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}]
    batch = next(iter(_connected(records, tokenizer, PromptKind(), batch_size=2).val_dataloader()))
    reward = Seen()
    score_samples(reward, batch.records, ["x"] * 4, 2, batch.prompts)
    assert reward.prompts == ["a", "a", [{"role": "user", "content": "b"}], [{"role": "user", "content": "b"}]]
    given = Seen()  # given prompts are used as they are, never parsed from the records again
    score_samples(given, [{}, {}], ["x", "y"], 1, ["p", "q"])
    assert given.prompts == ["p", "q"]


def test_predict_uses_prompt_batches_whatever_the_method_trains_on(tokenizer):
    records = [{"prompt": "hello", "completion": "world"}] * 2
    data = AlignDataModule(InMemory(records), val=InMemory(records)).connect(tokenizer, SFTKind())
    data.setup("predict")
    assert isinstance(next(iter(data.predict_dataloader())), PromptBatch)
    data.setup("validate")
    assert isinstance(next(iter(data.val_dataloader())), SFTBatch)


def test_ordered_batches_visit_every_pair_once_in_order(tokenizer):
    data = _connected(_pairs(7), tokenizer, PreferenceKind(), batch_size=2, val_batch_size=3)
    batches = list(data.ordered_batches("train"))
    assert [b.num_pairs for b in batches] == [3, 3, 1]
    assert torch.cat([b.index for b in batches]).tolist() == list(range(7))


def test_the_data_module_is_told_and_never_asks(tokenizer):
    class Trainer:
        @property
        def lightning_module(self):
            raise AssertionError("the data module looked into the trainer's module")

    data = AlignDataModule(InMemory(_pairs(2)))
    with pytest.raises(RuntimeError, match="connect"):
        data.setup("fit")
    data.trainer = Trainer()
    data.connect(tokenizer, PreferenceKind()).setup("fit")
    assert len(data.train_items) == 2
