"""ERP inventory items <-> canonical SKUs <-> wallet site products. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal, getcontext
from functools import cache, lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from canonical import IssuanceMode, Money, Sku, SkuKind, SkuStatus, WriteOffType
from canonical._base import prevalidated
from canonical.money import MoneyError, parse_decimal, quantize_exact
from canonical.schema import SchemaValidationError, Violation, json_schema, validate
from connectors.erp.records import InventoryItem
from mappings.errors import MappingError, rename, violations_from

ERP_SKU_FIELDS = {
    "sku": "itemId",
    "name": "displayName",
    "kind": "custitem_vf_kind",
    "face_value": "custitem_vf_face_value/custitem_vf_currency",
    "sales_areas": "custitem_vf_sales_areas",
    "issuance_mode": "custitem_vf_issuance_mode",
    "write_off_type": "custitem_vf_write_off_type",
    "status": "custitem_vf_status",
    "code_format": "custitem_vf_code_format",
    "updated_at": "lastModifiedDate",
}


def _amount_text(value: Any) -> Any:
    # the ERP sends numbers; the connector decodes them as Decimal (never float)
    if type(value) is Decimal or (isinstance(value, Decimal | int)
                                  and not isinstance(value, bool)):
        return str(value)
    return value


def _label(raw: dict[str, Any], item: InventoryItem | None = None) -> str:
    """The record as errors name it (made only for an error)."""
    label = f"inventoryItem {raw.get('id', '?')}"
    return f"{label} ({item.item_id})" if item is not None and item.item_id else label


def inventory_item_to_sku(raw: dict[str, Any], *, known_sites: Collection[str]) -> Sku:
    """An ERP inventory item as a canonical SKU, or a MappingError naming every problem.

    A record that plainly keeps every rule (nearly all of them) is built by ``_plain_sku``;
    any doubt, and every error, takes the validating path below, which names the problems."""
    sku = _plain_sku(raw, known_sites)
    if sku is not None:
        return sku
    return _validated_sku(raw, known_sites=known_sites)


def _validated_sku(raw: dict[str, Any], *, known_sites: Collection[str]) -> Sku:
    """The record through the ERP record model, the canonical schema and the Sku model."""
    try:
        item = InventoryItem.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(_label(raw), violations_from(exc)) from None

    areas = tuple(a.strip() for a in (item.sales_areas or "").split(",") if a.strip())
    status = SkuStatus.INACTIVE.value if item.is_inactive else item.status
    candidate: dict[str, Any] = {
        "sku": item.item_id or "",
        "name": item.display_name or "",
        "kind": item.kind,
        "face_value": {"amount": _amount_text(item.face_value), "currency": item.currency},
        "sales_areas": list(areas),
        "issuance_mode": item.issuance_mode,
        "write_off_type": item.write_off_type,
        "status": status,
        "updated_at": item.last_modified.isoformat() if item.last_modified else None,
    }
    if item.code_format:
        candidate["code_format"] = item.code_format

    problems: list[Violation] = []
    unknown = [a for a in areas if a not in known_sites]
    if unknown:
        problems.append(Violation(
            path="sales_areas", rule="known_site",
            message=f"{', '.join(repr(a) for a in unknown)} is not a configured site",
        ))
    try:
        sku = validate("Sku", candidate)
    except (SchemaValidationError, ValidationError) as exc:
        problems.extend(violations_from(exc))
        raise MappingError(_label(raw, item), rename(problems, ERP_SKU_FIELDS)) from None
    if problems:
        raise MappingError(_label(raw, item), rename(problems, ERP_SKU_FIELDS))
    assert isinstance(sku, Sku)
    return sku


# the plain path -----------------------------------------------------------------------------
# Validating a record through the ERP record model, the JSON Schema and the Sku model cost
# ~50 us, most of a full catalogue sync's mapping. ``_plain_sku`` checks the same rules
# directly on the raw record, strictly: every value of an exact type and plain form (a
# timestamp as ``YYYY-MM-DDTHH:MM:SS[.f]±HH:MM``, not everything pydantic would parse), and
# builds the SKU the validating path would build. It only ever says "certainly valid" or
# "not sure" (None); "not sure" goes the validating way, so the errors and dead letters are
# the validating path's. It is written against the models as they are: ``_PLAIN_MODELS``
# fingerprints them (schemas and source), and while they differ it is off
# (``plain_path_current``; a test says so, and another checks it against the validating path).

_PLAIN_MODELS = "e958881345b93be2"
"""``_models_fingerprint()`` of the models ``_plain_sku`` was written against."""

_SKU_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SITE_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
"""An aware timestamp in the one form every parser involved reads alike."""
_LOCAL_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?")

_KINDS = {k.value: k for k in SkuKind}
_MODES = {m.value: m for m in IssuanceMode}
_WRITE_OFFS = {w.value: w for w in WriteOffType}
_STATUSES = {s.value: s for s in SkuStatus}
_TEXT_ALIASES = tuple(f.alias or name for name, f in InventoryItem.model_fields.items()
                      if f.annotation == (str | None))
_STR = {str}
_FIELD_NAMES = frozenset(name for name, f in InventoryItem.model_fields.items()
                         if f.alias and f.alias != name)
"""The record model's own field names: with ``populate_by_name`` a record may carry those
instead of the ERP's names; such a record takes the validating path."""


def _models_fingerprint() -> str:
    """What ``_plain_sku`` relies on: the schemas of the ERP record and of the Sku (with
    Money's), the source of those models and their bases (their validators and settings),
    and of the validators their fields' types carry (``Annotated[..., BeforeValidator(f)]``)."""
    parts: list[Any] = [InventoryItem.model_json_schema(by_alias=True), json_schema("Sku")]
    for model in (InventoryItem, Sku, Money):
        for cls in model.__mro__:
            if issubclass(cls, BaseModel) and cls is not BaseModel:
                parts.append(inspect.getsource(cls))
        for name, info in sorted(model.model_fields.items()):
            parts.extend([name, *(inspect.getsource(m.func) for m in info.metadata
                                  if callable(getattr(m, "func", None)))])
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@cache
def plain_path_current() -> bool:
    """Whether the models are the ones ``_plain_sku`` was written against (without their
    source, as in a frozen build, it is off)."""
    try:
        return _models_fingerprint() == _PLAIN_MODELS
    except (OSError, TypeError):
        return False


@lru_cache(maxsize=4096)
def _parsed_time(value: str, aware: bool) -> datetime | None:
    """A timestamp in its plain form (``_TIMESTAMP``, or ``_LOCAL_TIMESTAMP`` when not
    ``aware``), parsed; None for anything else. Remembered, as the ones below: the items of
    a read share few times, amounts, sales areas and code formats."""
    if (_TIMESTAMP if aware else _LOCAL_TIMESTAMP).fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # a day or month out of range: the validating path says which
        return None


@lru_cache(maxsize=4096)
def _utc_time(value: str) -> datetime | None:
    """``_parsed_time`` of an aware timestamp, in UTC."""
    moment = _parsed_time(value, True)
    return None if moment is None else moment.astimezone(UTC)


@lru_cache(maxsize=4096)
def _face_value(kind: type, number: Any, currency: str, precision: int) -> Money | None:
    """The Money of a positive amount written plainly, or None. ``number`` is the value
    itself for an int or str ``kind``, a Decimal's text for a Decimal (equal Decimals may be
    written differently, ``150`` and ``1.5E+2``; the text gives the value back exactly).
    Keyed by the decimal context's precision too, which decides whether the amount can be
    quantized. Money is immutable: the SKUs of one amount share it."""
    value = Decimal(number) if kind is Decimal else number
    try:
        amount = parse_decimal(value, field="number")
        text = str(amount)
        if _DECIMAL_TEXT.fullmatch(text) is None:
            return None
        amount = quantize_exact(Decimal(text), currency)
    except (MoneyError, ArithmeticError):  # too many digits to quantize, among others
        return None
    if amount <= 0:
        return None
    return prevalidated(Money, {"amount": amount, "currency": currency})


@lru_cache(maxsize=4096)
def _sales_areas(text: str) -> tuple[str, ...] | None:
    """The site codes of a sales-area list, sorted, or None when one is not a plain site
    code or one is listed twice (whether the sites are known is the caller's check)."""
    areas = tuple(a.strip() for a in text.split(",") if a.strip())
    for area in areas:
        if _SITE_CODE.fullmatch(area) is None:
            return None
    if len(set(areas)) != len(areas):
        return None
    return tuple(sorted(areas))


@lru_cache(maxsize=1024)
def _pattern_ok(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


_TEXT_TYPES = frozenset({str, type(None)})


def _plain_sku(raw: dict[str, Any], known_sites: Collection[str]) -> Sku | None:
    """The SKU of a record that certainly keeps every rule, or None (see above)."""
    if not plain_path_current() or type(raw) is not dict or type(raw.get("id")) is not str:
        return None
    if not _FIELD_NAMES.isdisjoint(raw) or not set(map(type, raw)) <= _STR:
        return None
    get = raw.get
    if not _TEXT_TYPES.issuperset(map(type, map(get, _TEXT_ALIASES))):
        return None
    links = get("links", [])
    if type(links) is not list or (links and not all(
            type(link) is dict and all(type(k) is str for k in link) for link in links)):
        return None
    inactive = get("isInactive", False)
    if type(inactive) is not bool:
        return None
    created = get("createdDate")
    if created is not None and (type(created) is not str
                                or _parsed_time(created, False) is None):
        return None
    modified = get("lastModifiedDate")
    updated = _utc_time(modified) if type(modified) is str else None
    if updated is None:
        return None

    code, name = get("itemId"), get("displayName")
    if code is None or _SKU_CODE.fullmatch(code) is None:
        return None
    if name is None or not 0 < len(name) <= 300:
        return None
    kind = _KINDS.get(get("custitem_vf_kind"))  # type: ignore[arg-type]
    mode = _MODES.get(get("custitem_vf_issuance_mode"))  # type: ignore[arg-type]
    write_off = _WRITE_OFFS.get(get("custitem_vf_write_off_type"))  # type: ignore[arg-type]
    status = SkuStatus.INACTIVE if inactive else _STATUSES.get(
        get("custitem_vf_status"))  # type: ignore[arg-type]
    if kind is None or mode is None or write_off is None or status is None:
        return None

    currency = get("custitem_vf_currency")
    number = get("custitem_vf_face_value")
    number_type = type(number)
    if (currency is None or _CURRENCY.fullmatch(currency) is None
            or number_type not in (Decimal, int, str)):
        return None
    face_value = _face_value(number_type, str(number) if number_type is Decimal else number,
                             currency, getcontext().prec)
    if face_value is None:
        return None

    areas = _sales_areas(get("custitem_vf_sales_areas") or "")
    if areas is None or not all(area in known_sites for area in areas):
        return None
    code_format = get("custitem_vf_code_format")
    if code_format and not _pattern_ok(code_format):
        return None
    return prevalidated(Sku, {
        "sku": code, "name": name, "kind": kind, "face_value": face_value,
        "sales_areas": areas, "issuance_mode": mode, "write_off_type": write_off,
        "status": status,
        # given even when None: the model validates its default, which makes it a field set
        "code_format": code_format or None,
        "updated_at": updated,
    })


_WIRE: dict[str, str] = {member: member.value for enum in (SkuKind, SkuStatus, IssuanceMode,
                                                           WriteOffType) for member in enum}
"""The SKU's enums' values, by member (``.value``, a property, costs more than this look-up:
a full sync makes hundreds of thousands of products)."""
_INACTIVE = SkuStatus.INACTIVE.value


def sku_to_wallet_product(sku: Sku, *, listed: bool = True) -> dict[str, Any]:
    """The wallet site's Product for a SKU. ``listed=False`` is the SKU taken off a site that
    is no longer in its sales areas: it stays known to the site but inactive."""
    return {
        "sku": sku.sku,
        "name": sku.name,
        "kind": _WIRE[sku.kind],
        "face_value": sku.face_value.to_wire(),
        "status": _WIRE[sku.status] if listed else _INACTIVE,
        "issuance_mode": _WIRE[sku.issuance_mode],
        "write_off_type": _WIRE[sku.write_off_type],
    }
