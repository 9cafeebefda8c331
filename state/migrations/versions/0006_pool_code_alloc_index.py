"""code pool: drop ix_pool_code_alloc, which the partial in-stock index already covers

Every allocation changes a code's status, so the update cannot be HOT and inserts a new entry
into every index of pool_code; ix_pool_code_alloc (sku, status, expiry_rank, batch_seq, id)
served no query that ix_pool_code_in_stock (the same columns, in-stock codes only) does not,
and maintaining it cost about a third of the code update.

Revision ID: 0006_pool_code_alloc_index
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0006_pool_code_alloc_index"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pool_code", schema=None) as batch_op:
        batch_op.drop_index("ix_pool_code_alloc")


def downgrade() -> None:
    with op.batch_alter_table("pool_code", schema=None) as batch_op:
        batch_op.create_index("ix_pool_code_alloc",
                              ["sku", "status", "expiry_rank", "batch_seq", "id"], unique=False)
