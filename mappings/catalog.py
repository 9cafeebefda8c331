"""ERP inventory items <-> canonical SKUs <-> wallet site products. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from canonical import Sku, SkuStatus
from canonical.schema import SchemaValidationError, Violation, validate
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
    """An ERP inventory item as a canonical SKU, or a MappingError naming every problem."""
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


def sku_to_wallet_product(sku: Sku, *, listed: bool = True) -> dict[str, Any]:
    """The wallet site's Product for a SKU. ``listed=False`` is the SKU taken off a site that
    is no longer in its sales areas: it stays known to the site but inactive."""
    return {
        "sku": sku.sku,
        "name": sku.name,
        "kind": sku.kind.value,
        "face_value": sku.face_value.to_wire(),
        "status": sku.status.value if listed else SkuStatus.INACTIVE.value,
        "issuance_mode": sku.issuance_mode.value,
        "write_off_type": sku.write_off_type.value,
    }
