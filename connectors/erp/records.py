"""Typed ERP records as the ERP sends them (docs/erp-records.md). Not canonical: mappings turn
them into canonical models."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from canonical.money import parse_decimal


def _exact_number(value: Any) -> Any:
    # numbers arrive as Decimal (the client decodes JSON so); a float here means someone
    # decoded the body the lossy way, and its digits can no longer be trusted
    return None if value is None else parse_decimal(value, field="number")


ExactNumber = Annotated[Decimal | None, BeforeValidator(_exact_number)]


class ErpRecord(BaseModel):
    """Common shape: internal id, optional external id, links. Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    external_id: str | None = Field(default=None, alias="externalId")
    links: list[dict[str, Any]] = Field(default_factory=list)


class InventoryItem(ErpRecord):
    item_id: str | None = Field(default=None, alias="itemId")
    display_name: str | None = Field(default=None, alias="displayName")
    is_inactive: bool = Field(default=False, alias="isInactive")
    last_modified: datetime | None = Field(default=None, alias="lastModifiedDate")
    created: datetime | None = Field(default=None, alias="createdDate")
    kind: str | None = Field(default=None, alias="custitem_vf_kind")
    face_value: ExactNumber = Field(default=None, alias="custitem_vf_face_value")
    currency: str | None = Field(default=None, alias="custitem_vf_currency")
    sales_areas: str | None = Field(default=None, alias="custitem_vf_sales_areas")
    issuance_mode: str | None = Field(default=None, alias="custitem_vf_issuance_mode")
    write_off_type: str | None = Field(default=None, alias="custitem_vf_write_off_type")
    status: str | None = Field(default=None, alias="custitem_vf_status")
    code_format: str | None = Field(default=None, alias="custitem_vf_code_format")


RECORD_TYPES: dict[str, type[ErpRecord]] = {
    "inventoryItem": InventoryItem,
}
