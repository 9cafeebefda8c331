"""remittance: reconciliation results per day (groups, discrepancies, order outcomes),
operators' corrections, remittance batches in versions, and their approvals

Revision ID: 0007_remittance
Revises: 0003
Create Date: 2026-11-25

A branch of its own off 0003 (other features branch off it too; ``upgrade`` goes to every head).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import state.types

# state.models.ExactDecimal, spelled out so this migration does not import the models:
# NUMERIC(18,4) on PostgreSQL, exact text on SQLite.
DECIMAL = sa.Numeric(precision=18, scale=4).with_variant(sa.String(length=40), "sqlite")

revision = "0007_remittance"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('recon_correction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('assign_to', sa.String(length=255), nullable=True),
    sa.Column('amount', DECIMAL, nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('reason', sa.String(length=2000), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_recon_correction_day', 'recon_correction', ['day'], unique=False)
    op.create_table('recon_day',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('run_key', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('rules_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('counts', state.types.JSONText(), nullable=True),
    sa.Column('sources', state.types.JSONText(), nullable=True),
    sa.Column('matched_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('day')
    )
    op.create_table('recon_discrepancy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('category', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('site', sa.String(length=32), nullable=True),
    sa.Column('method', sa.String(length=32), nullable=True),
    sa.Column('order_id', sa.String(length=128), nullable=True),
    sa.Column('payout_id', sa.String(length=200), nullable=True),
    sa.Column('trace_ids', state.types.JSONText(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('expected', DECIMAL, nullable=True),
    sa.Column('actual', DECIMAL, nullable=True),
    sa.Column('difference', DECIMAL, nullable=True),
    sa.Column('detail', sa.String(length=2000), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('day', 'key', name='uq_recon_discrepancy')
    )
    op.create_index('ix_recon_discrepancy_class', 'recon_discrepancy', ['day', 'category'], unique=False)
    op.create_table('recon_group',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('site', sa.String(length=32), nullable=True),
    sa.Column('method', sa.String(length=32), nullable=True),
    sa.Column('order_id', sa.String(length=128), nullable=True),
    sa.Column('payout_id', sa.String(length=200), nullable=True),
    sa.Column('trace_ids', state.types.JSONText(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('expected', DECIMAL, nullable=True),
    sa.Column('received', DECIMAL, nullable=True),
    sa.Column('fee', DECIMAL, nullable=True),
    sa.Column('rule', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('day', 'group_id', name='uq_recon_group')
    )
    op.create_table('recon_outcome',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('site', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('expected', DECIMAL, nullable=False),
    sa.Column('received', DECIMAL, nullable=False),
    sa.Column('fee', DECIMAL, nullable=False),
    sa.Column('refunded', DECIMAL, nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('matched', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'site', 'order_id')
    )
    op.create_table('remittance_approval',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('approved', sa.Boolean(), nullable=False),
    sa.Column('approved_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('comment', sa.String(length=2000), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('discrepancies', state.types.JSONText(), nullable=True),
    sa.Column('at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_remittance_approval_batch', 'remittance_approval', ['batch_id', 'version'], unique=False)
    op.create_table('remittance_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('site', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('gross', DECIMAL, nullable=False),
    sa.Column('fees', DECIMAL, nullable=False),
    sa.Column('net', DECIMAL, nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('lines', state.types.JSONText(), nullable=False),
    sa.Column('reverses_version', sa.Integer(), nullable=True),
    sa.Column('blocking', state.types.JSONText(), nullable=True),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('treasury_ref', sa.String(length=128), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('note', sa.String(length=2000), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('validated_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('closed_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('posted_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('batch_id', 'version', name='uq_remittance_batch_version')
    )
    op.create_index('ix_remittance_batch_day', 'remittance_batch', ['day', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_remittance_batch_day', table_name='remittance_batch')
    op.drop_table('remittance_batch')
    op.drop_index('ix_remittance_approval_batch', table_name='remittance_approval')
    op.drop_table('remittance_approval')
    op.drop_table('recon_outcome')
    op.drop_table('recon_group')
    op.drop_index('ix_recon_discrepancy_class', table_name='recon_discrepancy')
    op.drop_table('recon_discrepancy')
    op.drop_table('recon_day')
    op.drop_index('ix_recon_correction_day', table_name='recon_correction')
    op.drop_table('recon_correction')
