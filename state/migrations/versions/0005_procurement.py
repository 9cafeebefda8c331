"""procurement: vendors, supplier contracts, purchase requests and orders, receipts, vendor
uploads and their refused rows, write-offs, vendor bills, payments, disputes

Revision ID: 0005_procurement
Revises: 0003
Create Date: 2026-11-24

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

revision = "0005_procurement"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('vendor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('slug', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('external_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('email', sa.String(length=255), nullable=True),
    sa.Column('country', sa.String(length=2), nullable=True),
    sa.Column('bank_account', sa.String(length=64), nullable=True),
    sa.Column('bank_bic', sa.String(length=11), nullable=True),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('token_hint', sa.String(length=16), nullable=True),
    sa.Column('token_rotated_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('slug'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('supplier_contract',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('contract_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('issuance_mode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('settlement_mode', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('payment_terms_days', sa.Integer(), nullable=False),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.Column('allows_returns', sa.Boolean(), nullable=False),
    sa.Column('terms', state.types.JSONText(), nullable=True),
    sa.Column('signature_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('signature_ref', sa.String(length=128), nullable=True),
    sa.Column('signed_by', sa.String(length=255), nullable=True),
    sa.Column('signed_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('contract_no')
    )
    op.create_index('ix_supplier_contract_vendor', 'supplier_contract', ['vendor_id', 'signature_status'], unique=False)
    op.create_table('vendor_dispute',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dispute_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('subject_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('subject_ref', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=False),
    sa.Column('amount', DECIMAL, nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('raised_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('resolution', sa.String(length=2000), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dispute_no')
    )
    op.create_index('ix_vendor_dispute_vendor', 'vendor_dispute', ['vendor_id', 'status'], unique=False)
    op.create_table('contract_item',
    sa.Column('contract_id', sa.Integer(), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.ForeignKeyConstraint(['contract_id'], ['supplier_contract.id'], ),
    sa.PrimaryKeyConstraint('contract_id', 'sku')
    )
    op.create_table('purchase_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('contract_id', sa.Integer(), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('memo', sa.String(length=1000), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contract_id'], ['supplier_contract.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_no')
    )
    op.create_table('purchase_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('po_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('contract_id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=True),
    sa.Column('issuance_mode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('tran_date', sa.Date(), nullable=False),
    sa.Column('site', sa.String(length=32), nullable=True),
    sa.Column('business_date', sa.Date(), nullable=True),
    sa.Column('memo', sa.String(length=1000), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contract_id'], ['supplier_contract.id'], ),
    sa.ForeignKeyConstraint(['request_id'], ['purchase_request.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('po_no')
    )
    op.create_index('ix_purchase_order_day', 'purchase_order', ['site', 'business_date'], unique=False)
    op.create_index('ix_purchase_order_vendor', 'purchase_order', ['vendor_id', 'status'], unique=False)
    op.create_table('purchase_request_line',
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('line_no', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['purchase_request.id'], ),
    sa.PrimaryKeyConstraint('request_id', 'line_no')
    )
    op.create_table('purchase_order_line',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('po_id', sa.Integer(), nullable=False),
    sa.Column('line_no', sa.Integer(), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.Column('received_quantity', sa.Integer(), nullable=False),
    sa.Column('billed_quantity', sa.Integer(), nullable=False),
    sa.Column('description', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['po_id'], ['purchase_order.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('po_id', 'line_no', name='uq_purchase_order_line')
    )
    op.create_table('vendor_bill',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bill_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('po_id', sa.Integer(), nullable=True),
    sa.Column('settlement_mode', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=True),
    sa.Column('vendor_invoice_ref', sa.String(length=64), nullable=True),
    sa.Column('bill_date', sa.Date(), nullable=False),
    sa.Column('due_date', sa.Date(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('total', DECIMAL, nullable=False),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('approved_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['po_id'], ['purchase_order.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('bill_no')
    )
    op.create_index('ix_vendor_bill_vendor', 'vendor_bill', ['vendor_id', 'status'], unique=False)
    op.create_table('vendor_bill_line',
    sa.Column('bill_id', sa.Integer(), nullable=False),
    sa.Column('line_no', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('po_line_id', sa.Integer(), nullable=True),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.Column('amount', DECIMAL, nullable=False),
    sa.Column('description', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['bill_id'], ['vendor_bill.id'], ),
    sa.ForeignKeyConstraint(['po_line_id'], ['purchase_order_line.id'], ),
    sa.PrimaryKeyConstraint('bill_id', 'line_no')
    )
    op.create_table('vendor_payment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('payment_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('bill_id', sa.Integer(), nullable=False),
    sa.Column('run_no', sa.String(length=64), nullable=True),
    sa.Column('amount', DECIMAL, nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('end_to_end_id', sa.String(length=35), nullable=True),
    sa.Column('requested_on', sa.Date(), nullable=True),
    sa.Column('confirmed_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['bill_id'], ['vendor_bill.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('payment_no')
    )
    op.create_index('ix_vendor_payment_vendor', 'vendor_payment', ['vendor_id', 'status'], unique=False)
    op.create_table('vendor_upload',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('upload_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('file_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('po_line_id', sa.Integer(), nullable=True),
    sa.Column('batch_no', sa.String(length=64), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=24), nullable=False),
    sa.Column('rows_total', sa.Integer(), nullable=False),
    sa.Column('rows_accepted', sa.Integer(), nullable=False),
    sa.Column('rows_rejected', sa.Integer(), nullable=False),
    sa.Column('message', sa.String(length=2000), nullable=True),
    sa.Column('created_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', state.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['po_line_id'], ['purchase_order_line.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('upload_no')
    )
    op.create_index('ix_vendor_upload_receiving', 'vendor_upload', ['po_line_id'], unique=True, postgresql_where=sa.text("status = 'receiving'"), sqlite_where=sa.text("status = 'receiving'"))
    op.create_index('ix_vendor_upload_vendor', 'vendor_upload', ['vendor_id', 'id'], unique=False)
    op.create_table('purchase_receipt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('receipt_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('po_id', sa.Integer(), nullable=False),
    sa.Column('po_line_id', sa.Integer(), nullable=False),
    sa.Column('upload_id', sa.Integer(), nullable=True),
    sa.Column('batch_no', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_cost', DECIMAL, nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('received_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('erp_id', sa.String(length=64), nullable=True),
    sa.Column('erp_batch_id', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['po_id'], ['purchase_order.id'], ),
    sa.ForeignKeyConstraint(['po_line_id'], ['purchase_order_line.id'], ),
    sa.ForeignKeyConstraint(['upload_id'], ['vendor_upload.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('batch_no'),
    sa.UniqueConstraint('receipt_no')
    )
    op.create_index('ix_purchase_receipt_po', 'purchase_receipt', ['po_id'], unique=False)
    op.create_table('upload_row',
    sa.Column('upload_id', sa.Integer(), nullable=False),
    sa.Column('row_no', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('rule', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('field', sa.String(length=32), nullable=True),
    sa.Column('value', sa.String(length=64), nullable=True),
    sa.Column('message', sa.String(length=1000), nullable=False),
    sa.ForeignKeyConstraint(['upload_id'], ['vendor_upload.id'], ),
    sa.PrimaryKeyConstraint('upload_id', 'row_no')
    )
    op.create_table('write_off',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    sa.Column('upload_id', sa.Integer(), nullable=False),
    sa.Column('row_no', sa.Integer(), nullable=False),
    sa.Column('code_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('last4', sqlmodel.sql.sqltypes.AutoString(length=4), nullable=False),
    sa.Column('redeemed_at', state.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('bill_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['bill_id'], ['vendor_bill.id'], ),
    sa.ForeignKeyConstraint(['upload_id'], ['vendor_upload.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('vendor_id', 'code_hash', name='uq_write_off_code')
    )
    op.create_index('ix_write_off_status', 'write_off', ['vendor_id', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_write_off_status', table_name='write_off')
    op.drop_table('write_off')
    op.drop_table('upload_row')
    op.drop_index('ix_purchase_receipt_po', table_name='purchase_receipt')
    op.drop_table('purchase_receipt')
    op.drop_index('ix_vendor_upload_vendor', table_name='vendor_upload')
    op.drop_index('ix_vendor_upload_receiving', table_name='vendor_upload', postgresql_where=sa.text("status = 'receiving'"), sqlite_where=sa.text("status = 'receiving'"))
    op.drop_table('vendor_upload')
    op.drop_index('ix_vendor_payment_vendor', table_name='vendor_payment')
    op.drop_table('vendor_payment')
    op.drop_table('vendor_bill_line')
    op.drop_index('ix_vendor_bill_vendor', table_name='vendor_bill')
    op.drop_table('vendor_bill')
    op.drop_table('purchase_order_line')
    op.drop_table('purchase_request_line')
    op.drop_index('ix_purchase_order_vendor', table_name='purchase_order')
    op.drop_index('ix_purchase_order_day', table_name='purchase_order')
    op.drop_table('purchase_order')
    op.drop_table('purchase_request')
    op.drop_table('contract_item')
    op.drop_index('ix_vendor_dispute_vendor', table_name='vendor_dispute')
    op.drop_table('vendor_dispute')
    op.drop_index('ix_supplier_contract_vendor', table_name='supplier_contract')
    op.drop_table('supplier_contract')
    op.drop_table('vendor')
