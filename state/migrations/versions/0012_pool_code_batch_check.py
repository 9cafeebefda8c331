"""code pool: the statement trigger that keeps ``pool_code.batch_no`` pointing at a batch
checks each batch the statement names once, not once per inserted code

0009's check ran ``NOT EXISTS (SELECT 1 FROM pool_batch ...)`` for every row of the
statement's transition table: 5,000 lookups of the same batch row for a 5,000-code chunk,
each walking that row's version chain (the batch's quantities are updated after every chunk)
and its multixact of key-share locks. Profiled while a million codes were uploaded on
PostgreSQL 15, the trigger was 16% of the database's CPU. The rule is the same: every batch
the statement names is locked ``FOR KEY SHARE`` (as a foreign key does) and must exist.
SQLite keeps its row triggers (0009).

Revision ID: 0012_pool_code_batch_check
Revises: 0011_api_allocation_by_site_time
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0012_pool_code_batch_check"
down_revision = "0011_api_allocation_by_site_time"
branch_labels = None
depends_on = None

_PER_BATCH = """
CREATE OR REPLACE FUNCTION pool_code_batch_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named text;
BEGIN
    FOR named IN SELECT DISTINCT n.batch_no FROM new_codes n LOOP
        PERFORM 1 FROM pool_batch b WHERE b.batch_no = named FOR KEY SHARE OF b;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pool_code: batch % does not exist', named
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$
"""

_PER_ROW = """
CREATE OR REPLACE FUNCTION pool_code_batch_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    PERFORM 1 FROM pool_batch b
    WHERE b.batch_no IN (SELECT DISTINCT n.batch_no FROM new_codes n)
    FOR KEY SHARE OF b;
    SELECT n.batch_no INTO missing FROM new_codes n
    WHERE NOT EXISTS (SELECT 1 FROM pool_batch b WHERE b.batch_no = n.batch_no) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pool_code: batch % does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PER_BATCH)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PER_ROW)
