"""A data source for tests: records held in a Python list (``from in_memory import InMemory``)."""

from __future__ import annotations

from collections.abc import Iterator


class InMemory:
    """Records from a list, named ``name:record i`` in error messages as a file's would be by line."""

    def __init__(self, records: list[dict], name: str = "memory"):
        """
        Args:
            records: the records, in order.
            name: shown in error messages as ``name:record i``.
        """
        self._records, self.name = records, name

    def records(self) -> Iterator[tuple[str, dict]]:
        for i, record in enumerate(self._records):
            yield f"{self.name}:record {i}", record
