"""Where records come from: local files, hub datasets, built-in task generators.

A source is any object with ``records() -> Iterator[tuple[str, dict]]`` yielding
``(origin, record)``. ``origin`` names the file and line (or generator and index) so
that validation errors can point at the exact record.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable


class DataError(ValueError):
    """A record is malformed. The message names file, record and field."""


def describe(source) -> str:
    """A source as a person would name it in an error: its file, its dataset id, or its class."""
    if isinstance(source, LocalFile):
        return str(Path(source.path).expanduser())
    if isinstance(source, HubDataset):
        return f"{source.name}[{source.split}]"
    return type(source).__name__


def _not_utf8(path: Path, raw: bytes, error: UnicodeDecodeError, first_line: int = 1) -> DataError:
    """The line and column of the first byte of ``raw`` (read from ``path``) that is not UTF-8."""
    line_start = raw.rfind(b"\n", 0, error.start) + 1
    line = first_line + raw.count(b"\n", 0, error.start)
    bad = raw[error.start : error.start + 1]
    return DataError(f"{path}:line {line}: not UTF-8 text (byte {bad!r} at column {error.start - line_start + 1}); "
                     "save the file as UTF-8")


@runtime_checkable
class Source(Protocol):
    def records(self) -> Iterator[tuple[str, dict]]: ...


def read_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(origin, record)`` from a ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file: the one
    reader of record files (``LocalFile``, an evaluation's earlier responses). Text files may start with a
    UTF-8 byte-order mark, as some editors save them; any other fault is a ``DataError`` naming the file
    and line (or record)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")
    count = 0
    for count, item in enumerate(readers[suffix](path), start=1):
        yield item
    if count == 0:
        raise DataError(f"{path}: holds no records (the file is empty)")


def _without_bom(raw: bytes) -> bytes:
    # Editors on Windows save UTF-8 with a leading byte-order mark; JSON itself must not start with one.
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            origin = f"{path}:line {lineno}"
            raw = _without_bom(raw) if lineno == 1 else raw
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e, first_line=lineno) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{origin}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{origin}: expected a JSON object, got {type(record).__name__}")
            yield origin, record


def _json(path: Path) -> Iterator[tuple[str, dict]]:
    raw = _without_bom(path.read_bytes())
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, record in enumerate(data):
        origin = f"{path}:record {i}"
        if not isinstance(record, dict):
            raise DataError(f"{origin}: expected a JSON object, got {type(record).__name__}")
        yield origin, record


def _parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, record in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", record


class LocalFile:
    """Records from a local ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file (``read_records``)."""

    def __init__(self, path: str):
        """
        Args:
            path: file to read; the suffix picks the reader (.jsonl, .json, .parquet).
        """
        self.path = path

    def records(self) -> Iterator[tuple[str, dict]]:
        return read_records(self.path)


class HubDataset:
    """Records from a Hugging Face dataset id (or a local dataset folder) via ``datasets.load_dataset``."""

    def __init__(self, name: str, split: str = "train", subset: str | None = None):
        """
        Args:
            name: dataset id such as ``HuggingFaceH4/ultrafeedback_binarized``, or a local folder.
            split: which split to read, e.g. ``train`` or ``train_prefs``.
            subset: the dataset configuration name, if it has several.
        """
        self.name, self.split, self.subset = name, split, subset

    def records(self) -> Iterator[tuple[str, dict]]:
        import datasets

        try:
            ds = datasets.load_dataset(self.name, self.subset, split=self.split)
        except (ConnectionError, OSError) as e:
            raise DataError(
                f"dataset {self.name!r} (split {self.split!r}) could not be loaded: {e.__class__.__name__}. "
                "Without hub access, save the data as .jsonl/.parquet and use "
                "class_path: lit_align.data.sources.LocalFile instead."
            ) from None
        for i, record in enumerate(ds):
            yield f"{self.name}[{self.split}]:row {i}", dict(record)
