"""A record's constraints as stored (``{"kind": ..., **args}``), read back with errors that name the
record and field, and checked against a response."""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields

from lit_align.data.sources import DataError
from lit_align.tasks.constraints.checks import KINDS, Constraint


def _argument(cls: type, name: str, d: dict, where: str):
    """One constructor argument from ``d``, type-checked; bool is refused where an int is wanted."""
    hint = typing.get_type_hints(cls)[name]
    allowed = typing.get_args(hint) or (hint,)
    value = d[name]
    if isinstance(value, bool) or not isinstance(value, allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise DataError(f"{where}.{name}' must be {names}, got {type(value).__name__}")
    return value


def constraint_from_dict(d: dict, origin: str, field: str = "constraint") -> Constraint:
    """A constraint from its stored ``{"kind": ..., **args}``; errors name ``origin`` and ``field``."""
    where = f"{origin}: field '{field}"
    if not isinstance(d, dict):
        raise DataError(f"{where}' must be an object, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise DataError(f"{where}.kind': unknown constraint kind {kind!r} (known: {', '.join(KINDS)})")
    cls = KINDS[kind]
    names = [f.name for f in fields(cls)]
    extra = sorted(set(d) - set(names) - {"kind"})
    if extra:
        raise DataError(f"{where}.{extra[0]}': not an argument of {kind!r} (arguments: {names})")
    missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING]
    if missing:
        raise DataError(f"{where}.{missing[0]}': missing argument of {kind!r}")
    args = {name: _argument(cls, name, d, where) for name in names if name in d}
    try:
        return cls(**args)
    except ValueError as e:
        raise DataError(f"{where}': bad {kind!r} constraint: {e}") from None


def _constraints(record: dict, origin: str) -> list[Constraint]:
    items = record.get("constraints") if isinstance(record, dict) else None
    if not isinstance(items, list) or not items:
        raise DataError(f"{origin}: field 'constraints' must be a non-empty list of constraint objects")
    return [constraint_from_dict(d, origin, f"constraints[{i}]") for i, d in enumerate(items)]


def check_record(text: str, record: dict, origin: str = "record") -> list[bool]:
    """Whether ``text`` satisfies each constraint of ``record``, in order."""
    return [c.check(text) for c in _constraints(record, origin)]
