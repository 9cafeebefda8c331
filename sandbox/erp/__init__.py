"""NetSuite-style ERP sandbox (see ``sandbox/README.md``)."""

from __future__ import annotations

from sandbox.erp.app import (
    DEFAULT_CONCURRENCY_LIMIT,
    ERROR_MEDIA_TYPE,
    RECORD_PREFIX,
    ErpError,
    ErpSandbox,
)
from sandbox.erp.auth import DEFAULT_CREDENTIALS, Credentials, OAuthVerifier
from sandbox.erp.query import QueryError, compile_query, parse_date_literal
from sandbox.erp.seed import INVALID_REASONS, SeedReport, generate_inventory_items
from sandbox.erp.store import RECORD_SCHEMAS, RecordStore, RecordTable

DEFAULT_ACCOUNT = DEFAULT_CREDENTIALS.account

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_CONCURRENCY_LIMIT",
    "DEFAULT_CREDENTIALS",
    "ERROR_MEDIA_TYPE",
    "INVALID_REASONS",
    "RECORD_PREFIX",
    "RECORD_SCHEMAS",
    "Credentials",
    "ErpError",
    "ErpSandbox",
    "OAuthVerifier",
    "QueryError",
    "RecordStore",
    "RecordTable",
    "SeedReport",
    "compile_query",
    "generate_inventory_items",
    "parse_date_literal",
]
