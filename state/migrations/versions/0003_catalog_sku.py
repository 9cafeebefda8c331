"""catalogue as last mapped from the ERP

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import state.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_sku",
        sa.Column("sku", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("erp_id", sa.String(length=64), nullable=True),
        sa.Column("issuance_mode", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("sales_areas", sa.String(length=1000), nullable=False),
        sa.Column("data", state.types.JSONText(), nullable=False),
        sa.Column("erp_modified_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku"),
    )
    with op.batch_alter_table("catalog_sku", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_sku_updated", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("catalog_sku", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_sku_updated")
    op.drop_table("catalog_sku")
