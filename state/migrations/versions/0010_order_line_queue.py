"""order lines: on PostgreSQL the queue index holds only the lines still waiting (pending or
held)

Every allocated line left an entry in ``ix_order_line_queue`` (the update that allocates it
cannot be HOT, so each index gets a new entry): a million sold lines kept a million entries
nobody reads, written inside the allocation transaction. The queue is read for pending lines
(oldest first) and for held ones; those stay indexed. SQLite keeps the whole index (its
planner uses a partial index only for a condition written exactly like the index's).

Revision ID: 0010_order_line_queue
Revises: 0009_pool_code_writes
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_order_line_queue"
down_revision = "0009_pool_code_writes"
branch_labels = None
depends_on = None

_COLUMNS = ["status", "order_created_at", "site", "order_id"]
_WAITING = sa.text("status IN ('pending', 'held')")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_order_line_queue", table_name="order_line")
    op.create_index("ix_order_line_queue", "order_line", _COLUMNS, postgresql_where=_WAITING)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_order_line_queue", table_name="order_line", postgresql_where=_WAITING)
    op.create_index("ix_order_line_queue", "order_line", _COLUMNS)
