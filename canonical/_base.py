"""Shared pieces of the canonical models: strictness, identifier types, aware times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

KEY_PATTERN = r"^[A-Za-z0-9_-]+$"
"""Characters allowed in anything that ends up in an external id (NetSuite's rule)."""

SkuCode = Annotated[str, Field(min_length=1, max_length=64, pattern=KEY_PATTERN)]
SiteCode = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
BatchNo = Annotated[str, Field(min_length=1, max_length=64, pattern=KEY_PATTERN)]
CountryCode = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""An aware datetime, normalised to UTC so equal instants compare and hash equal."""


class CanonicalModel(BaseModel):
    """Base of every canonical record: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        str_strip_whitespace=False,
        validate_default=True,
    )


def mask(value: str | None, *, keep: int = 4) -> str:
    """Mask bearer value (voucher codes, PINs) down to its last ``keep`` characters."""
    if value is None:
        return ""
    if len(value) <= keep:
        return "*" * len(value)
    return "*" * (len(value) - keep) + value[-keep:]


class BearerValue(SecretStr):
    """A voucher code or PIN: bearer value, like cash.

    It prints masked to its last four characters everywhere (repr, str, JSON dumps) unless a
    caller explicitly asks for the secret value to hand it to a system that must receive it.
    """

    def _display(self) -> str:
        return mask(self.get_secret_value())


def now_utc() -> datetime:
    return datetime.now(UTC)


def reveal(data: Any) -> Any:
    """Recursively unwrap SecretStr values (for the one place that must send them)."""
    if isinstance(data, SecretStr):
        return data.get_secret_value()
    if isinstance(data, dict):
        return {k: reveal(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [reveal(v) for v in data]
    return data


_Model = TypeVar("_Model", bound=BaseModel)


def prevalidated(model: type[_Model], values: dict[str, Any]) -> _Model:
    """``model.model_construct(**values)`` for ``values`` already valid that name every field
    in the model's order, as validation would have set them: what ``model_construct`` ends
    with, without its walk over the fields and aliases to fill defaults (about a third of
    the cost, on hot paths that make tens of thousands of SKUs or Money). Callers check that
    it builds what ``model_construct`` builds for the models they give it."""
    built = model.__new__(model)
    object.__setattr__(built, "__dict__", values)
    object.__setattr__(built, "__pydantic_fields_set__", set(values))
    object.__setattr__(built, "__pydantic_extra__", None)
    object.__setattr__(built, "__pydantic_private__", None)
    return built


def field_bound(model: type[BaseModel], name: str, bound: str) -> int:
    """A field's bound as its model declares it (``max_length``, ``ge`` or ``le`` of its
    pydantic metadata): where code outside the model must know the limit past which the
    model refuses a value, it reads it here rather than repeating the number."""
    return next(int(getattr(m, bound)) for m in model.model_fields[name].metadata
                if getattr(m, bound, None) is not None)
