"""settlement: daily API purchase orders and their batch bookings, codes issued by API
suppliers, vendor credits, payment runs, the cost ledger and finance postings

Revision ID: 0008_settlement
Revises: 0003
Create Date: 2026-11-25

A branch of its own off 0003 (``upgrade`` goes to every head). Ids of procurement rows carry
no foreign key, so the branches may be applied in any order.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import state.types

# state.models.ExactDecimal, spelled out so this migration does not import the models:
# NUMERIC(18,4) on PostgreSQL, exact text on SQLite.
DECIMAL = sa.Numeric(precision=18, scale=4).with_variant(sa.String(length=40), "sqlite")

revision = "0008_settlement"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cost_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entry_date', sa.Date(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('batch_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('amount', DECIMAL, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entry_date', 'kind', 'batch_no', name='uq_cost_entry')
    )
    op.create_index('ix_cost_entry_batch', 'cost_entry', ['batch_no', 'entry_date'], unique=False)
    op.create_table('cost_source',
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source')
    )
    op.create_table('finance_posting',
    sa.Column('document_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('entry_date', sa.Date(), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('total', DECIMAL, nullable=False),
    sa.Column('line_count', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('posting_ref', sa.String(length=64), nullable=True),
    sa.Column('message', sa.String(length=2000), nullable=True),
    sa.Column('posted_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('document_id')
    )
    op.create_index('ix_finance_posting_day', 'finance_posting', ['entry_date', 'kind'], unique=False)
    op.create_table('payment_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_no', sqlmodel.sql.sqltypes.AutoString(length=35), nullable=False),
    sa.Column('execution_date', sa.Date(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('file_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('payments', sa.Integer(), nullable=False),
    sa.Column('totals', state.types.JSONText(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_no')
    )
    op.create_table('api_day_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('batch_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('po_id', sa.Integer(), nullable=True),
    sa.Column('line_no', sa.Integer(), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_api_day_batch_day', 'api_day_batch', ['site', 'sku', 'business_date'], unique=False)
    op.create_table('api_day_order',
    sa.Column('po_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('site', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('business_date', sa.Date(), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('correction', sa.Integer(), nullable=False),
    sa.Column('window_start', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('window_end', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('receipt_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('receipt_erp_id', sa.String(length=64), nullable=True),
    sa.Column('posted_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('po_id'),
    sa.UniqueConstraint('receipt_no'),
    sa.UniqueConstraint('site', 'sku', 'business_date', 'vendor_id', 'correction', name='uq_api_day_order')
    )
    op.create_table('api_issued_code',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('code_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('last4', sqlmodel.sql.sqltypes.AutoString(length=4), nullable=False),
    sa.Column('site', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('line_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('batch_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('sold_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('write_off_id', sa.BigInteger(), nullable=True),
    sa.Column('po_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code_hash', name='uq_api_issued_code_hash')
    )
    op.create_index('ix_api_issued_code_line', 'api_issued_code', ['site', 'order_id', 'line_id'], unique=False)
    op.create_table('vendor_credit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('credit_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('bill_id', sa.Integer(), nullable=False),
    sa.Column('batch_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.Column('amount', DECIMAL, nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('code_ids', state.types.JSONText(), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('credit_no')
    )


def downgrade() -> None:
    op.drop_table('vendor_credit')
    op.drop_index('ix_api_issued_code_line', table_name='api_issued_code')
    op.drop_table('api_issued_code')
    op.drop_table('api_day_order')
    op.drop_index('ix_api_day_batch_day', table_name='api_day_batch')
    op.drop_table('api_day_batch')
    op.drop_table('payment_run')
    op.drop_index('ix_finance_posting_day', table_name='finance_posting')
    op.drop_table('finance_posting')
    op.drop_table('cost_source')
    op.drop_index('ix_cost_entry_batch', table_name='cost_entry')
    op.drop_table('cost_entry')
