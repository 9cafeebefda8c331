"""Record schemas (docs/erp-records.md) and the checks every write goes through.

A schema maps a record type's body fields to a ``Field``: a scalar kind (text, boolean,
number, integer, date, datetime), a reference ``{"id": "<internal id>"}`` or a sublist
``{"items": [line, ...]}`` whose lines have typed fields of their own. Writes to a schema'd
type are refused when they name an unknown field or give a wrongly typed value
(``INVALID_PARAMETER`` with the field's path, e.g. ``item.items[1].quantity``); a reference
to a record that does not exist is ``INVALID_KEY_OR_REF`` (``check_refs``). Types without a
schema are stored as sent.

Numbers are kept as ``int`` or ``Decimal`` (never binary floats): request bodies are decoded
with ``parse_float=Decimal`` and floats given by Python callers are converted through their
shortest repr, so ``7.9`` stays ``7.9``. ``erp_dumps`` writes them back as exact JSON
numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "COMPUTED_TOTAL_TYPES",
    "EXTERNAL_ID_RE",
    "INTERNAL_ID_RE",
    "READ_ONLY_FIELDS",
    "RECORD_SCHEMAS",
    "REQUIRED_ON_CREATE",
    "TRANSACTION_TYPES",
    "TYPE_RE",
    "Field",
    "SchemaError",
    "check_fields",
    "check_refs",
    "decimal_text",
    "erp_dumps",
    "erp_loads",
    "finalize",
    "from_snapshot",
    "normalize_value",
    "q_field_types",
    "to_snapshot",
]

EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
INTERNAL_ID_RE = re.compile(r"^[1-9][0-9]{0,17}$")
TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: Fields the server maintains; a client sending them is ignored for these (as a GET-then-PUT
#: round trip would send them back).
READ_ONLY_FIELDS = frozenset({"id", "links", "createdDate", "lastModifiedDate"})


class SchemaError(ValueError):
    """A refused write: ``detail`` for the client, ``path`` for ``o:errorPath``."""

    def __init__(self, detail: str, path: str | None, code: str = "INVALID_PARAMETER") -> None:
        super().__init__(detail)
        self.detail, self.path, self.code = detail, path, code


@dataclass(frozen=True)
class Field:
    """One body field (or sublist line field).

    ``kind``: ``string | boolean | number | integer | date | datetime | ref | sublist``.
    ``choices``/``pattern`` narrow a string; ``target`` is the record type a ``ref`` points
    at (``None``: not checked); ``lines`` are a sublist's line fields, ``numbered`` sublists
    get ``line`` = 1-based position when a line has none; ``read_only`` fields are computed
    by the sandbox and ignored when sent.
    """

    kind: str
    choices: tuple[str, ...] | None = None
    pattern: re.Pattern[str] | None = None
    pattern_desc: str = ""
    target: str | None = None
    lines: Mapping[str, Field] | None = field(default=None, hash=False, compare=False)
    numbered: bool = False
    read_only: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.pattern is not None:
            return self.pattern_desc
        return {
            "string": "text",
            "boolean": "a boolean",
            "number": "a number",
            "integer": "an integer",
            "date": "a date YYYY-MM-DD",
            "datetime": "a datetime",
            "ref": 'a reference {"id": "<internal id>"}',
            "sublist": 'a sublist {"items": [...]}',
        }[self.kind]


TEXT = Field("string")
BOOL = Field("boolean")
NUMBER = Field("number")
INTEGER = Field("integer")
DATE = Field("date")
DATETIME = Field("datetime")
CURRENCY = Field("string", pattern=re.compile(r"^[A-Z]{3}$"), pattern_desc="an ISO 4217 code")
COUNTRY = Field("string", pattern=re.compile(r"^[A-Z]{2}$"), pattern_desc="an ISO 3166 alpha-2 code")
EMAIL = Field("string", pattern=re.compile(r"^[^@\s]+@[^@\s]+$"), pattern_desc="an email address")
HEX = Field("string", pattern=re.compile(r"^[0-9A-Fa-f]+$"), pattern_desc="hexadecimal text")
TOTAL = Field("number", read_only=True)


def ref(target: str | None) -> Field:
    return Field("ref", target=target)


def enum(*choices: str) -> Field:
    return Field("string", choices=choices)


def sublist(lines: Mapping[str, Field], *, numbered: bool = True) -> Field:
    return Field("sublist", lines=dict(lines), numbered=numbered)


_COMMON: dict[str, Field] = {
    "id": TEXT,
    "externalId": TEXT,
    "createdDate": DATETIME,
    "lastModifiedDate": DATETIME,
}

#: Transaction line fields (the ``item`` sublist).
ITEM_LINE: dict[str, Field] = {
    "line": INTEGER,
    "item": ref("inventoryItem"),
    "quantity": NUMBER,
    "rate": NUMBER,
    "amount": NUMBER,
    "description": TEXT,
    "custcol_vf_batch_no": TEXT,
    "custcol_vf_line_id": TEXT,
    "custcol_vf_site": TEXT,
}
ITEM_LINES = sublist(ITEM_LINE)
JOURNAL_LINES = sublist(
    {"line": INTEGER, "account": ref(None), "debit": NUMBER, "credit": NUMBER, "memo": TEXT}
)
APPLY_LINES = sublist({"doc": ref("vendorBill"), "amount": NUMBER}, numbered=False)

_ENTITY = {
    "entityId": TEXT,
    "companyName": TEXT,
    "currency": CURRENCY,
    "email": EMAIL,
    "isInactive": BOOL,
}


def _schema(**fields: Field) -> dict[str, Field]:
    return {**_COMMON, **fields}


#: Record types whose fields are known (docs/erp-records.md). For these, unknown fields and
#: wrongly typed values are refused, in writes and in ``q``; other types are schemaless.
RECORD_SCHEMAS: dict[str, dict[str, Field]] = {
    "inventoryItem": _schema(
        itemId=TEXT,
        displayName=TEXT,
        isInactive=BOOL,
        custitem_vf_kind=TEXT,
        custitem_vf_face_value=NUMBER,
        custitem_vf_currency=TEXT,
        custitem_vf_sales_areas=TEXT,
        custitem_vf_issuance_mode=TEXT,
        custitem_vf_write_off_type=TEXT,
        custitem_vf_status=TEXT,
        custitem_vf_code_format=TEXT,
    ),
    "vendor": _schema(
        **_ENTITY,
        custentity_vf_settlement_mode=enum(
            "purchased_quantity", "sales_quantity", "write_off_quantity"
        ),
        custentity_vf_contract_signed=BOOL,
        custentity_vf_bank_account=TEXT,
        custentity_vf_bank_bic=TEXT,
        custentity_vf_country=COUNTRY,
    ),
    "customer": _schema(**_ENTITY, custentity_vf_site=TEXT),
    "purchaseRequisition": _schema(
        entity=ref("vendor"), tranDate=DATE, currency=CURRENCY, memo=TEXT, item=ITEM_LINES
    ),
    "purchaseOrder": _schema(
        tranId=TEXT,
        entity=ref("vendor"),
        tranDate=DATE,
        currency=CURRENCY,
        memo=TEXT,
        status=TEXT,
        custbody_vf_site=TEXT,
        custbody_vf_business_date=DATE,
        item=ITEM_LINES,
        total=TOTAL,
    ),
    "itemReceipt": _schema(
        tranId=TEXT,
        entity=ref("vendor"),
        createdFrom=ref("purchaseOrder"),
        tranDate=DATE,
        currency=CURRENCY,
        memo=TEXT,
        item=ITEM_LINES,
    ),
    "vendorBill": _schema(
        tranId=TEXT,
        entity=ref("vendor"),
        createdFrom=ref("purchaseOrder"),
        tranDate=DATE,
        dueDate=DATE,
        currency=CURRENCY,
        memo=TEXT,
        approvalStatus=enum("pending", "approved", "rejected"),
        status=enum("open", "paidInFull", "cancelled"),
        item=ITEM_LINES,
        total=TOTAL,
    ),
    "vendorCredit": _schema(
        tranId=TEXT,
        entity=ref("vendor"),
        createdFrom=ref("vendorBill"),
        tranDate=DATE,
        currency=CURRENCY,
        memo=TEXT,
        item=ITEM_LINES,
        total=TOTAL,
    ),
    "vendorPayment": _schema(
        tranId=TEXT,
        entity=ref("vendor"),
        tranDate=DATE,
        currency=CURRENCY,
        memo=TEXT,
        total=NUMBER,
        apply=APPLY_LINES,
    ),
    "salesOrder": _schema(
        tranId=TEXT,
        entity=ref("customer"),
        tranDate=DATE,
        currency=CURRENCY,
        otherRefNum=TEXT,
        custbody_vf_site=TEXT,
        memo=TEXT,
        status=TEXT,
        item=ITEM_LINES,
        total=TOTAL,
    ),
    "itemFulfillment": _schema(
        tranId=TEXT, createdFrom=ref("salesOrder"), tranDate=DATE, item=ITEM_LINES
    ),
    "invoice": _schema(
        tranId=TEXT,
        entity=ref("customer"),
        createdFrom=ref("salesOrder"),
        tranDate=DATE,
        currency=CURRENCY,
        item=ITEM_LINES,
        total=TOTAL,
    ),
    "cashSale": _schema(
        tranId=TEXT,
        entity=ref("customer"),
        createdFrom=ref("salesOrder"),
        tranDate=DATE,
        currency=CURRENCY,
        item=ITEM_LINES,
        total=TOTAL,
    ),
    "customerPayment": _schema(
        tranId=TEXT,
        customer=ref("customer"),
        tranDate=DATE,
        currency=CURRENCY,
        payment=NUMBER,
        memo=TEXT,
    ),
    "journalEntry": _schema(
        tranId=TEXT,
        tranDate=DATE,
        currency=CURRENCY,
        memo=TEXT,
        custbody_vf_site=TEXT,
        line=JOURNAL_LINES,
    ),
    "customrecord_vf_batch": _schema(
        name=TEXT,
        custrecord_vf_batch_sku=ref("inventoryItem"),
        custrecord_vf_batch_quantity=INTEGER,
        custrecord_vf_batch_available=INTEGER,
        custrecord_vf_batch_remaining=INTEGER,
        custrecord_vf_batch_status=TEXT,
        custrecord_vf_batch_unit_cost=NUMBER,
        custrecord_vf_batch_currency=CURRENCY,
        custrecord_vf_batch_expiry_type=TEXT,
        custrecord_vf_batch_expires_on=DATE,
        custrecord_vf_batch_po=ref("purchaseOrder"),
        custrecord_vf_batch_sites=TEXT,
    ),
    "customrecord_vf_code": _schema(
        name=TEXT,
        custrecord_vf_code_hash=HEX,
        custrecord_vf_code_batch=ref("customrecord_vf_batch"),
        custrecord_vf_code_status=TEXT,
        custrecord_vf_code_order=ref("salesOrder"),
    ),
}

#: record type -> SuiteQL ``transaction.type`` code. Transactions share one id sequence.
TRANSACTION_TYPES: dict[str, str] = {
    "purchaseRequisition": "PurchReq",
    "purchaseOrder": "PurchOrd",
    "itemReceipt": "ItemRcpt",
    "vendorBill": "VendBill",
    "vendorCredit": "VendCred",
    "vendorPayment": "VendPymt",
    "salesOrder": "SalesOrd",
    "itemFulfillment": "ItemShip",
    "invoice": "CustInvc",
    "cashSale": "CashSale",
    "customerPayment": "CustPymt",
    "journalEntry": "Journal",
}

#: Types whose read-only ``total`` is the sum of their ``item`` lines' amounts.
COMPUTED_TOTAL_TYPES = frozenset(
    t for t, s in RECORD_SCHEMAS.items() if "total" in s and s["total"].read_only
)

#: Fields NetSuite insists on when a record of the type is created.
REQUIRED_ON_CREATE: dict[str, tuple[str, ...]] = {"inventoryItem": ("itemId",)}

_Q_KINDS = {"integer": "number"}


def q_field_types(record_type: str) -> dict[str, str] | None:
    """Field name -> kind for the ``q`` filter, or ``None`` for a schemaless type."""
    schema = RECORD_SCHEMAS.get(record_type)
    if schema is None:
        return None
    return {name: _Q_KINDS.get(f.kind, f.kind) for name, f in schema.items()}


# ---- numbers and JSON ---------------------------------------------------------------------------


def decimal_text(value: int | Decimal) -> str:
    """Decimal text without exponent, trailing zeros or float artefacts (``10``, ``12.5``)."""
    if isinstance(value, int):
        return str(value)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize_value(value: Any) -> Any:
    """Floats (from Python callers or a JSON snapshot) -> ``Decimal``, recursively."""
    cls = value.__class__
    if cls is float:
        return Decimal(repr(value))
    if cls is dict:
        return {k: normalize_value(v) for k, v in value.items()}
    if cls is list:
        return [normalize_value(v) for v in value]
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def erp_loads(raw: bytes | str) -> Any:
    """Decode a request body: numbers with a fraction become ``Decimal``; NaN is refused."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if _orjson is not None:
            return _orjson.Fragment(format(value, "f"))
        return float(value)  # pragma: no cover - only without orjson
    raise TypeError(f"cannot encode {type(value).__name__}")


def erp_dumps(data: Any) -> bytes:
    """Encode JSON with ``Decimal`` as exact JSON numbers (``10.50`` stays ``10.50``)."""
    if _orjson is not None:
        return _orjson.dumps(data, default=_default)
    return json.dumps(  # pragma: no cover - only without orjson
        data, default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode()


def to_snapshot(value: Any) -> Any:
    """A structure core's ``dumps`` can write: ``Decimal`` as raw JSON numbers."""
    cls = value.__class__
    if cls is Decimal:
        return _orjson.Fragment(format(value, "f")) if _orjson is not None else float(value)
    if cls is dict:
        if not any(v.__class__ in _CONTAINERS for v in value.values()):
            return value
        return {k: to_snapshot(v) for k, v in value.items()}
    if cls is list:
        return [to_snapshot(v) for v in value]
    return value


_CONTAINERS = (Decimal, dict, list)


def from_snapshot(value: Any) -> Any:
    """The reverse of ``to_snapshot`` after ``json.loads``: floats back to ``Decimal``."""
    return normalize_value(value)


# ---- checks -------------------------------------------------------------------------------------


def check_fields(record_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a client may set, checked against the type's schema and normalised
    (numbers as ``int``/``Decimal``, references as ``{"id"}``, numbered sublist lines).
    ``None`` values are kept: PATCH uses them to clear a field."""
    schema = RECORD_SCHEMAS.get(record_type)
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in READ_ONLY_FIELDS:
            continue
        if schema is None:
            out[name] = normalize_value(value)
            continue
        spec = schema.get(name)
        if spec is None:
            raise SchemaError(f"Invalid field {name!r} for record type {record_type}.", name)
        if spec.read_only:
            continue
        out[name] = None if value is None else _check(spec, value, name)
    eid = out.get("externalId")
    if eid is not None and (not isinstance(eid, str) or not EXTERNAL_ID_RE.match(eid)):
        raise SchemaError(
            f"Invalid externalId {eid!r}: use letters, digits, '_' and '-'.", "externalId"
        )
    return out


def _wrong(spec: Field, value: Any, path: str) -> SchemaError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SchemaError(f"Invalid value for field {path}: expected {spec.describe()}, got {shown}.", path)


def _check(spec: Field, value: Any, path: str) -> Any:
    kind = spec.kind
    if kind == "string":
        if not isinstance(value, str):
            raise _wrong(spec, value, path)
        if spec.choices is not None and value not in spec.choices:
            raise _wrong(spec, value, path)
        if spec.pattern is not None and not spec.pattern.match(value):
            raise _wrong(spec, value, path)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _wrong(spec, value, path)
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise _wrong(spec, value, path)
        if isinstance(value, float):
            value = Decimal(repr(value))
        if isinstance(value, Decimal) and not value.is_finite():
            raise _wrong(spec, value, path)
        return value
    if kind == "integer":
        if isinstance(value, Decimal | float):
            try:
                whole = int(value)
            except (ValueError, OverflowError):
                raise _wrong(spec, value, path) from None
            if whole != value:
                raise _wrong(spec, value, path)
            value = whole
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(spec, value, path)
        return value
    if kind == "date":
        if not isinstance(value, str) or not _DATE_RE.match(value):
            raise _wrong(spec, value, path)
        try:
            date.fromisoformat(value)
        except ValueError:
            raise _wrong(spec, value, path) from None
        return value
    if kind == "datetime":
        if not isinstance(value, str):
            raise _wrong(spec, value, path)
        return value
    if kind == "ref":
        return _check_ref(spec, value, path)
    if kind == "sublist":
        return _check_sublist(spec, value, path)
    raise AssertionError(kind)  # pragma: no cover


def _check_ref(spec: Field, value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _wrong(spec, value, path)
    for key in value:
        if key not in ("id", "refName", "links"):
            raise SchemaError(
                f"Invalid field {key!r} in the reference {path}: a reference is "
                f'{{"id": "<internal id>"}}.',
                f"{path}.{key}",
            )
    rid = value.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool) and rid > 0:
        rid = str(rid)
    if not isinstance(rid, str) or not INTERNAL_ID_RE.match(rid):
        raise SchemaError(
            f"Invalid value for field {path}.id: expected an internal id, got {rid!r}.",
            f"{path}.id",
        )
    return {"id": rid}


def _check_sublist(spec: Field, value: Any, path: str) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(value, dict):
        raise _wrong(spec, value, path)
    for key in value:
        if key not in ("items", "links"):
            raise SchemaError(
                f'Invalid field {key!r} in the sublist {path}: a sublist is {{"items": [...]}}.',
                f"{path}.{key}",
            )
    items = value.get("items")
    if not isinstance(items, list):
        raise SchemaError(
            f"Invalid value for field {path}.items: expected a list of lines.", f"{path}.items"
        )
    assert spec.lines is not None
    lines: list[dict[str, Any]] = []
    for i, line in enumerate(items):
        where = f"{path}.items[{i}]"
        if not isinstance(line, dict):
            raise SchemaError(f"Invalid value for {where}: expected a line object.", where)
        out: dict[str, Any] = {}
        for name, v in line.items():
            if name == "links":
                continue
            line_spec = spec.lines.get(name)
            if line_spec is None:
                raise SchemaError(f"Invalid field {name!r} in {where}.", f"{where}.{name}")
            if v is not None:
                out[name] = _check(line_spec, v, f"{where}.{name}")
        if spec.numbered:
            if out.setdefault("line", i + 1) < 1:
                raise SchemaError(f"Invalid line number in {where}: lines start at 1.", f"{where}.line")
        if (
            "amount" in spec.lines and "amount" not in out
            and out.get("quantity") is not None and out.get("rate") is not None
        ):  # fmt: skip
            out["amount"] = out["quantity"] * out["rate"]
        lines.append(out)
    return {"items": lines}


def check_refs(
    record_type: str, fields: Mapping[str, Any], exists: Callable[[str, str], bool]
) -> None:
    """Refuse references (in ``fields``, the values being written) to records that do not
    exist, as NetSuite does: 400 ``INVALID_KEY_OR_REF`` naming the path."""
    schema = RECORD_SCHEMAS.get(record_type)
    if schema is None:
        return
    for name, value in fields.items():
        spec = schema.get(name)
        if spec is None or value is None:
            continue
        if spec.kind == "ref":
            _check_exists(spec, value, name, exists)
        elif spec.kind == "sublist" and spec.lines is not None:
            for i, line in enumerate(value["items"]):
                for lname, lvalue in line.items():
                    lspec = spec.lines.get(lname)
                    if lspec is not None and lspec.kind == "ref":
                        _check_exists(lspec, lvalue, f"{name}.items[{i}].{lname}", exists)


def _check_exists(
    spec: Field, value: Mapping[str, str], path: str, exists: Callable[[str, str], bool]
) -> None:
    if spec.target is not None and not exists(spec.target, value["id"]):
        raise SchemaError(
            f"Invalid {path} reference key {value['id']}: no {spec.target} with that internal id.",
            path,
            code="INVALID_KEY_OR_REF",
        )


def finalize(record_type: str, record: dict[str, Any]) -> None:
    """Computed fields and whole-record rules, applied after a write is merged:
    ``total`` = the sum of the ``item`` lines' amounts; a journal entry must balance."""
    if record_type in COMPUTED_TOTAL_TYPES:
        lines = (record.get("item") or {}).get("items") or []
        record["total"] = sum((line.get("amount") or 0 for line in lines), 0)
    elif record_type == "journalEntry":
        lines = (record.get("line") or {}).get("items") or []
        debit = sum((line.get("debit") or 0 for line in lines), 0)
        credit = sum((line.get("credit") or 0 for line in lines), 0)
        if debit != credit:
            raise SchemaError(
                f"This transaction is not in balance: debits {decimal_text(debit)}, "
                f"credits {decimal_text(credit)}.",
                "line",
                code="USER_ERROR",
            )
