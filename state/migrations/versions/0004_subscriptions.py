"""downstream subscribers: outbound events (numbered in commit order), subscriptions, and the
deliveries that did not go through at the first try

Revision ID: 0004_subscriptions
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import state.types

revision = "0004_subscriptions"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbound_event",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("entity_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("entity_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("occurred_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("data", state.types.JSONText(), nullable=False),
        sa.Column("recorded_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id", name="uq_outbound_event_id"),
        # never reuse a number, even the highest one deleted: readers keep cursors
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbound_event_type", "outbound_event", ["type", "seq"], unique=False)
    op.create_table(
        "subscription",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("event_types", sa.String(length=1000), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("settled_seq", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", state.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failing_since", state.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("created_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_subscription_name"),
    )
    op.create_table(
        "subscription_delivery",
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("entity", sa.String(length=330), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", state.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("updated_at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", state.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscription.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscription_id", "event_seq"),
    )
    op.create_index("ix_subscription_delivery_open", "subscription_delivery",
                    ["subscription_id", "status", "event_seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_subscription_delivery_open", table_name="subscription_delivery")
    op.drop_table("subscription_delivery")
    op.drop_table("subscription")
    op.drop_index("ix_outbound_event_type", table_name="outbound_event")
    op.drop_table("outbound_event")
