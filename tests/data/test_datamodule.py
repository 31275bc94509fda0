import json
import logging

import pytest

from lit_align.data.collate import PromptBatch, SFTBatch
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.kinds import PromptKind, SFTKind
from lit_align.data.sources import DataError, HubDataset, LocalFile


def _file(tmp_path, n=10, long_every=0):
    path = tmp_path / "train.jsonl"
    rows = []
    for i in range(n):
        completion = " ".join(["world"] * (40 if long_every and i % long_every == 0 else 2))
        rows.append(json.dumps({"prompt": f"hello {i}", "completion": completion}))
    path.write_text("\n".join(rows))
    return path


def _dm(tokenizer, source, **kw):
    dm = AlignDataModule(source, **kw).connect(tokenizer, SFTKind())
    dm.setup("fit")
    return dm


def test_val_fraction_split_is_deterministic_and_disjoint(tmp_path, tokenizer):
    src = LocalFile(str(_file(tmp_path, 20)))
    a = _dm(tokenizer, src, val_fraction=0.25, seed=3)
    b = _dm(tokenizer, src, val_fraction=0.25, seed=3)
    assert len(a.train_items) == 15 and len(a.val_items) == 5
    assert [e.origin for e in a.val_items] == [e.origin for e in b.val_items]
    assert not {e.origin for e in a.val_items} & {e.origin for e in a.train_items}


def test_limit_and_batches(tmp_path, tokenizer):
    dm = _dm(tokenizer, LocalFile(str(_file(tmp_path, 20))), limit=6, batch_size=4)
    assert len(dm.train_items) == 6
    batches = list(dm.train_dataloader())
    assert [b.input_ids.shape[0] for b in batches] == [4, 2]
    assert all(isinstance(b, SFTBatch) for b in batches)
    assert sum(b.num_loss_tokens for b in batches) == sum(e.num_loss_tokens for e in dm.train_items)


def test_over_long_records_are_counted_and_logged(tmp_path, tokenizer, caplog):
    src = LocalFile(str(_file(tmp_path, 9, long_every=3)))  # records 0, 3, 6 are long
    with caplog.at_level(logging.WARNING):
        dm = _dm(tokenizer, src, max_length=20, truncation="drop")
    assert len(dm.train_items) == 6 and dm.stats["train/dropped"] == 3
    assert "3 of 9 records longer than max_length=20" in caplog.text
    dm2 = _dm(tokenizer, src, max_length=20, truncation="truncate")
    assert len(dm2.train_items) == 9 and max(len(e.input_ids) for e in dm2.train_items) == 20
    with pytest.raises(ValueError, match="truncation"):
        AlignDataModule(src, truncation="cut")


def test_prompt_format_left_pads_and_keeps_records(tmp_path, tokenizer):
    dm = AlignDataModule(LocalFile(str(_file(tmp_path, 3))), val=LocalFile(str(_file(tmp_path, 3))))
    dm.connect(tokenizer, PromptKind())
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert isinstance(batch, PromptBatch) and len(batch.records) == 3
    assert (batch.attention_mask[:, -1] == 1).all()


def test_hub_dataset_source_reads_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    _file(folder, 4)
    rows = list(HubDataset(str(folder), split="train").records())
    assert len(rows) == 4 and rows[0][1]["prompt"] == "hello 0" and "[train]:row 0" in rows[0][0]


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DataError, match="HuggingFaceH4/ultrafeedback_binarized.*LocalFile"):
        list(HubDataset("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs").records())


def test_empty_train_set_is_a_clear_error(tmp_path, tokenizer):
    dm = _dm(tokenizer, LocalFile(str(_file(tmp_path, 3, long_every=1))), max_length=10, truncation="drop")
    with pytest.raises(DataError, match="no training records"):
        dm.train_dataloader()


class _Counted:
    """A source that counts how often it is read."""

    def __init__(self, source):
        self.source, self.reads = source, 0

    def records(self):
        self.reads += 1
        return self.source.records()


def test_a_test_run_reads_the_test_split_and_nothing_else(tmp_path, tokenizer):
    (tmp_path / "held_out").mkdir()
    train, val = _Counted(LocalFile(str(_file(tmp_path, 6)))), _Counted(LocalFile(str(_file(tmp_path, 6))))
    held_out = LocalFile(str(_file(tmp_path / "held_out", 3)))
    dm = AlignDataModule(train, val=val, test=held_out, val_batch_size=2).connect(tokenizer, SFTKind())
    dm.setup("test")
    assert (train.reads, val.reads) == (0, 0)
    assert [e.origin for e in dm.test_items] == [f"{held_out.path}:line {i}" for i in (1, 2, 3)]
    assert [b.input_ids.size(0) for b in dm.test_dataloader()] == [2, 1]
    assert sum(b.input_ids.size(0) for b in dm.view().ordered_batches("test")) == 3
    dm.setup("fit")
    assert (train.reads, val.reads) == (1, 1) and len(dm.test_items) == 3


def test_a_test_run_without_a_test_split_is_refused_not_given_another(tmp_path, tokenizer):
    src = LocalFile(str(_file(tmp_path, 4)))
    dm = AlignDataModule(src, val=src).connect(tokenizer, SFTKind())
    with pytest.raises(DataError, match="no test split: set data.test.*does not fall back on the validation split"):
        dm.setup("test")
    with pytest.raises(DataError, match="no test split"):
        dm.test_dataloader()


def test_the_view_a_method_is_handed_carries_the_length_and_each_split_in_order(tmp_path, tokenizer):
    dm = AlignDataModule(LocalFile(str(_file(tmp_path, 5))), max_length=33, val_batch_size=2).connect(tokenizer, SFTKind())
    view = dm.view()
    assert view.max_length == 33
    dm.setup("fit")
    assert [b.input_ids.size(0) for b in view.ordered_batches("train")] == [2, 2, 1]
    assert list(view.ordered_batches("val")) == []
