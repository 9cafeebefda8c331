"""code pool: a code's receipt kept once per chunk of codes received together

``code_receipt`` holds who received a chunk of codes, when, from which system and into which
batch; each code names its receipt (``pool_code.receipt_id``). Until now every received code
got its own ``receive`` row in ``code_event`` saying the same thing as the rest of its chunk:
profiled on a million-code upload (PostgreSQL 15), those rows and their two index entries
were about a fifth of the database's work. Codes received before this revision keep their
``receive`` event in ``code_event`` (``receipt_id`` stays empty); ``state.pool.code_history``
reads both.

Revision ID: 0013_code_receipt
Revises: 0012_pool_code_batch_check
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import state.types

revision = "0013_code_receipt"
down_revision = "0012_pool_code_batch_check"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "code_receipt",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("batch_no", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("at", state.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("system", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # a plain ALTER on both databases (a batch-mode copy of pool_code on SQLite would drop
    # the triggers of 0009)
    op.add_column("pool_code", sa.Column("receipt_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Gives every code received since back its ``receive`` event, then drops the receipts."""
    op.execute(
        "INSERT INTO code_event (code_id, at, actor, system, action, from_status, to_status, "
        "detail) SELECT c.id, r.at, r.actor, r.system, 'receive', NULL, 'in_stock', r.detail "
        "FROM pool_code c JOIN code_receipt r ON r.id = c.receipt_id ORDER BY c.id")
    op.execute("ALTER TABLE pool_code DROP COLUMN receipt_id")  # SQLite >= 3.35 too
    op.drop_table("code_receipt")
