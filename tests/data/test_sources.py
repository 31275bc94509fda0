"""The one reader of record files: what it accepts (a leading UTF-8 byte-order mark) and what it names."""

import codecs
import json

import pytest

from lit_align.data.sources import DataError, LocalFile, read_records
from lit_align.evaluation.instruction import read_responses

ROWS = [{"prompt": "héllo", "response": "a"}, {"prompt": "b", "response": "c"}]


def _jsonl(path, rows, bom=False):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
    return path


def test_jsonl_and_json_with_a_byte_order_mark_read_as_without_one(tmp_path):
    plain = list(LocalFile(str(_jsonl(tmp_path / "plain.jsonl", ROWS))).records())
    marked = list(LocalFile(str(_jsonl(tmp_path / "marked.jsonl", ROWS, bom=True))).records())
    assert [r for _, r in marked] == [r for _, r in plain] == ROWS
    assert marked[0][0].endswith("marked.jsonl:line 1")
    listed = tmp_path / "marked.json"
    listed.write_bytes(codecs.BOM_UTF8 + json.dumps(ROWS, ensure_ascii=False).encode("utf-8"))
    assert [r for _, r in read_records(listed)] == ROWS


def test_only_a_leading_mark_is_dropped(tmp_path):
    # A mark inside the file is not an editor's: the line stays malformed JSON, named by its line.
    path = tmp_path / "inside.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n' + codecs.BOM_UTF8 + b'{"prompt": "b"}\n')
    with pytest.raises(DataError, match=r"inside.jsonl:line 2: malformed JSON"):
        list(read_records(path))


def test_a_bad_byte_after_the_mark_is_named_at_its_column_as_an_editor_shows_it(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:line 1: not UTF-8 text \(byte b'\\xe9' at column 16\)"):
        list(read_records(path))


def test_earlier_responses_are_read_by_the_same_reader(tmp_path):
    path = _jsonl(tmp_path / "responses.jsonl", ROWS, bom=True)
    assert read_responses(str(path)) == ROWS
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"\n')
    with pytest.raises(DataError, match=r"responses.jsonl:line 2: malformed JSON"):
        read_responses(str(path))
