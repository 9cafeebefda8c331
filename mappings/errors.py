"""Mapping failures that name the record, the field and the rule, for dead letters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from canonical.schema import SchemaValidationError, Violation, validate


class MappingError(ValueError):
    """A source record that cannot become a canonical one. The message names the record,
    each offending field (in the source system's own names where they differ) and the rule."""

    def __init__(self, record: str, violations: Sequence[Violation]) -> None:
        self.record = record
        self.violations = list(violations)
        super().__init__(f"{record}: " + "; ".join(str(v) for v in self.violations))


def violations_from(exc: ValidationError | SchemaValidationError) -> list[Violation]:
    if isinstance(exc, SchemaValidationError):
        return list(exc.violations)
    found = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "$"
        message = err["msg"].removeprefix("Value error, ")
        found.append(Violation(path=path, rule=err["type"], message=message))
    return found


def validated(model: str, payload: Any, record: str) -> BaseModel:
    """``payload`` as the canonical ``model`` (schema, then the model's own rules), or a
    MappingError naming ``record`` and every problem."""
    try:
        return validate(model, payload)
    except (SchemaValidationError, ValidationError) as exc:
        raise MappingError(record, violations_from(exc)) from None


def rename(violations: Sequence[Violation], source_fields: Mapping[str, str]) -> list[Violation]:
    """Add the source system's field name to each canonical path it came from."""
    out = []
    for v in violations:
        head = v.path.split(".", 1)[0].split("[", 1)[0]
        source = source_fields.get(head)
        path = f"{v.path} ({source})" if source and source != head else v.path
        out.append(Violation(path=path, rule=v.rule, message=v.message))
    return out
