from pathlib import Path

import pytest

from lit_align.data.datamodule import AlignDataModule
from lit_align.data.formats import IGNORE_INDEX
from lit_align.data.kinds import PreferenceKind
from lit_align.data.preference import parse_pair, policy_example, reward_example
from lit_align.data.sources import DataError, LocalFile

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ultrafeedback_binarized_sample.jsonl"


def _learned(tokenizer, example):
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_ultrafeedback_conversations_split_at_shared_prompt(tokenizer):
    origin, record = next(iter(LocalFile(str(FIXTURE)).records()))
    pair = parse_pair(record, origin)
    assert pair.prompt == [{"role": "user", "content": "What is the capital of France?"}]
    assert pair.chosen == [{"role": "assistant", "content": "The capital of France is Paris."}]
    assert (pair.score_chosen, pair.score_rejected) == (9.0, 3.0)
    ex = policy_example(pair, tokenizer)
    assert _learned(tokenizer, ex.chosen) == "The capital of France is Paris.<|im_end|>"
    assert _learned(tokenizer, ex.rejected) == "France's capital is Berlin.<|im_end|>"
    n = len(ex.chosen.input_ids) - ex.chosen.num_loss_tokens - 1
    assert ex.chosen.input_ids[:n] == ex.rejected.input_ids[:n], "both responses follow the same prompt tokens"


def test_text_pairs_and_missing_scores(tokenizer):
    pair = parse_pair({"prompt": "hello", "chosen": " yes", "rejected": " no"}, "m")
    assert pair.score_chosen != pair.score_chosen  # NaN when absent
    ex = policy_example(pair, tokenizer)
    assert _learned(tokenizer, ex.chosen) == " yes<|im_end|>" and ex.chosen.input_ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical"),
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "p", "chosen": "a", "rejected": 3}, "'rejected' must be text"),
        ({"chosen": "a", "rejected": "b"}, "'prompt' must be text or a message list, but is missing"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "'chosen' is empty"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": "high"}, "'score_chosen' must be a number"),
        ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}, "share no prompt"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
          "rejected": [{"role": "assistant", "content": "b"}]}, "'chosen' has no assistant"),
        ({"prompt": "p", "chosen": [{"role": "robot", "content": "a"}], "rejected": "b"}, "chosen[0].role"),
    ],
)
def test_bad_pairs_are_named(record, fragment):
    with pytest.raises(DataError, match="file.jsonl:line 7") as err:
        parse_pair(record, "file.jsonl:line 7")
    assert fragment in str(err.value)


def test_reward_inputs_use_the_reward_tokenizer_as_text_pairs():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "user", ":", "hi", "assistant", "yes", "no"]
    bert = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    pair = parse_pair({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yes"}],
                       "rejected": [{"role": "assistant", "content": "no"}]}, "m")
    ex, cut = reward_example(pair, bert, max_length=64)
    assert not cut
    assert bert.convert_ids_to_tokens(ex.chosen.input_ids) == ["[CLS]", "user", ":", "hi", "[SEP]", "assistant", ":", "yes", "[SEP]"]
    short, cut = reward_example(pair, bert, max_length=6)
    assert cut and len(short.chosen.input_ids) == 6 and short.chosen.input_ids[-1] == bert.sep_token_id


def test_datamodule_builds_preference_batches_and_counts_truncation(tokenizer, tmp_path, caplog):
    dm = AlignDataModule(LocalFile(str(FIXTURE)), val_fraction=0.25, batch_size=3, max_length=18, truncation="drop")
    dm.connect(tokenizer, PreferenceKind())
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert dm.stats["train/over_length"] > 0 and "longer than max_length=18" in caplog.text
    dm = AlignDataModule(LocalFile(str(FIXTURE)), val_fraction=0.25, batch_size=3, max_length=512)
    dm.connect(tokenizer, PreferenceKind())
    dm.setup("fit")
    assert len(dm.train_items) == 9 and len(dm.val_items) == 3
    assert [x.index for x in dm.train_items] == list(range(9))
    batch = next(iter(dm.train_dataloader()))
    assert batch.input_ids.shape[0] == 6 and batch.num_pairs == 3
    assert (batch.labels[:3] != IGNORE_INDEX).any() and (batch.labels[3:] != IGNORE_INDEX).any()
