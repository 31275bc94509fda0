import json

import pytest

from lit_align.data import formats
from lit_align.data.formats import IGNORE_INDEX
from lit_align.data.sources import DataError, LocalFile

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}


def test_chat_boundary_token_ids_exact(tokenizer):
    ex = formats.sft_example(CHAT, "mem:0", tokenizer)
    # <s> <|im_start|> user \n hi <|im_end|> \n <|im_start|> assistant \n | yes <|im_end|> | \n
    assert ex.input_ids == [1, 2, 289, 262, 202, 75, 76, 3, 202, 2, 68, 287, 313, 202, 92, 325, 3, 202]
    assert ex.labels == [IGNORE_INDEX] * 14 + [92, 325, 3] + [IGNORE_INDEX]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert ex.input_ids.count(bos) == 1, "the template writes BOS; tokenizing must not add a second"
    assert [t for t in ex.labels if t == eos] == [eos], "each completion ends with exactly one EOS"
    assert tokenizer.decode(ex.input_ids[14:17]) == "yes<|im_end|>"


def test_multi_turn_chat_puts_loss_on_every_assistant_turn_only(tokenizer):
    record = {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "and"}, {"role": "assistant", "content": "no"},
    ]}
    ex = formats.sft_example(record, "mem:0", tokenizer)
    learned = tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX])
    assert learned == "yes<|im_end|>no<|im_end|>"


def test_prompt_completion_messages_learn_completion_only(tokenizer):
    record = {
        "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "old"}, {"role": "user", "content": "and"}],
        "completion": [{"role": "assistant", "content": "yes"}],
    }
    ex = formats.sft_example(record, "mem:0", tokenizer)
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX]) == "yes<|im_end|>"


def test_text_prompt_completion_boundaries(tokenizer):
    ex = formats.sft_example({"prompt": "hello", "completion": " world"}, "mem:0", tokenizer)
    prompt_ids = tokenizer("hello")["input_ids"]  # the tokenizer adds BOS itself
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids and prompt_ids[0] == tokenizer.bos_token_id
    assert ex.input_ids.count(tokenizer.bos_token_id) == 1
    assert ex.input_ids[-1] == tokenizer.eos_token_id and ex.input_ids.count(tokenizer.eos_token_id) == 1
    assert ex.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert ex.labels[len(prompt_ids):] == ex.input_ids[len(prompt_ids):]
    # A completion that already ends with EOS text does not get a second EOS.
    ex2 = formats.sft_example({"prompt": "hello", "completion": " world<|im_end|>"}, "mem:0", tokenizer)
    assert ex2.input_ids == ex.input_ids


def test_prompt_ids_end_with_generation_header(tokenizer):
    ids = formats.prompt_ids({"prompt": [{"role": "user", "content": "hi"}]}, "mem:0", tokenizer)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert ids.count(tokenizer.bos_token_id) == 1


def _write_jsonl(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _first_error(tmp_path, lines, tokenizer) -> str:
    path = _write_jsonl(tmp_path, lines)
    with pytest.raises(DataError) as err:
        for origin, record in LocalFile(str(path)).records():
            formats.sft_example(record, origin, tokenizer)
    return str(err.value)


GOOD = json.dumps(CHAT)


@pytest.mark.parametrize(
    "bad_line, must_mention",
    [
        ('{"messages": [', ["line 2", "malformed JSON"]),
        ('["not", "an", "object"]', ["line 2", "JSON object"]),
        ('{"text": "no known fields"}', ["line 2", "format", "text"]),
        ('{"messages": []}', ["line 2", "'messages'", "empty conversation"]),
        ('{"messages": [{"role": "bot", "content": "x"}]}', ["line 2", "messages[0].role", "'bot'"]),
        ('{"messages": [{"role": "user"}]}', ["line 2", "messages[0]", "'content'"]),
        ('{"messages": [{"role": "user", "content": 5}]}', ["line 2", "messages[0].content", "int"]),
        ('{"messages": "hello"}', ["line 2", "'messages'", "list"]),
        ('{"messages": [{"role": "user", "content": "hi"}]}', ["line 2", "no assistant turn"]),
        ('{"prompt": "hi", "completion": 3}', ["line 2", "'completion'", "int"]),
        ('{"prompt": "hi", "completion": ""}', ["line 2", "'completion'", "empty"]),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, tokenizer, bad_line, must_mention):
    message = _first_error(tmp_path, [GOOD, bad_line], tokenizer)
    assert "data.jsonl" in message
    for fragment in must_mention:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_bad_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(LocalFile(str(tmp_path / "missing.jsonl")).records())
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv.*unsupported"):
        list(LocalFile(str(tmp_path / "x.csv")).records())
    (tmp_path / "x.json").write_text('{"messages": []}')
    with pytest.raises(DataError, match=r"x\.json.*list"):
        list(LocalFile(str(tmp_path / "x.json")).records())


def test_json_and_parquet_sources_read_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.json", "d.parquet"):
        got = list(LocalFile(str(tmp_path / name)).records())
        assert [r for _, r in got] == rows
        assert got[1][0].endswith(("record 1", "row 1"))


def test_truncation_modes(tokenizer):
    ex = formats.sft_example({"prompt": "hello", "completion": " world world world world"}, "m", tokenizer)
    n_prompt = ex.labels.index(next(t for t in ex.labels if t != IGNORE_INDEX))
    cut = formats.truncate(ex, n_prompt + 2, "truncate")
    assert len(cut.input_ids) == n_prompt + 2 and cut.num_loss_tokens == 2
    assert formats.truncate(ex, n_prompt + 2, "drop") is None
    assert formats.truncate(ex, n_prompt, "truncate") is None  # no room left for any completion token
    assert formats.truncate(ex, 10_000, "drop") is ex
