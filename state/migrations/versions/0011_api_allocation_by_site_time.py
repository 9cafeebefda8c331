"""api allocations: indexed by site and time

The supplier-codes step reads each site's API allocations since its last run
(``flows.supplier_codes.queue_api_lines``); without an index on ``(site, at)`` that read
walks every allocation the site ever made, and grows with history.

Revision ID: 0011_api_allocation_by_site_time
Revises: 0010_order_line_queue
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0011_api_allocation_by_site_time"
down_revision = "0010_order_line_queue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_api_allocation_site_at", "api_allocation", ["site", "at"])


def downgrade() -> None:
    op.drop_index("ix_api_allocation_site_at", table_name="api_allocation")
