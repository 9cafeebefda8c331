"""NetSuite-style ERP sandbox (see ``sandbox/README.md``)."""

from __future__ import annotations

from sandbox.erp.app import (
    ASYNC_JOB_PREFIX,
    DEFAULT_CONCURRENCY_LIMIT,
    ERROR_MEDIA_TYPE,
    RECORD_PREFIX,
    SUITEQL_PATH,
    TOKEN_PATH,
    ErpError,
    ErpSandbox,
)
from sandbox.erp.auth import DEFAULT_CREDENTIALS, Credentials, OAuthVerifier
from sandbox.erp.jobs import MAX_BATCH_ITEMS, Job, JobBook
from sandbox.erp.oauth2 import (
    ASSERTION_TYPE,
    KeyPair,
    OAuth2Clients,
    client_assertion,
    generate_key_pair,
)
from sandbox.erp.query import QueryError, compile_query, parse_date_literal
from sandbox.erp.schema import (
    RECORD_SCHEMAS,
    TRANSACTION_TYPES,
    Field,
    SchemaError,
    decimal_text,
    erp_dumps,
    erp_loads,
)
from sandbox.erp.seed import INVALID_REASONS, SeedReport, generate_inventory_items
from sandbox.erp.store import RecordStore, RecordTable
from sandbox.erp.suiteql import MAX_RESULT_ROWS, SUITEQL_TABLES, SuiteQLEngine, SuiteQLError

DEFAULT_ACCOUNT = DEFAULT_CREDENTIALS.account

__all__ = [
    "ASSERTION_TYPE",
    "ASYNC_JOB_PREFIX",
    "DEFAULT_ACCOUNT",
    "DEFAULT_CONCURRENCY_LIMIT",
    "DEFAULT_CREDENTIALS",
    "ERROR_MEDIA_TYPE",
    "INVALID_REASONS",
    "MAX_BATCH_ITEMS",
    "MAX_RESULT_ROWS",
    "RECORD_PREFIX",
    "RECORD_SCHEMAS",
    "SUITEQL_PATH",
    "SUITEQL_TABLES",
    "TOKEN_PATH",
    "TRANSACTION_TYPES",
    "Credentials",
    "ErpError",
    "ErpSandbox",
    "Field",
    "Job",
    "JobBook",
    "KeyPair",
    "OAuth2Clients",
    "OAuthVerifier",
    "QueryError",
    "RecordStore",
    "RecordTable",
    "SchemaError",
    "SeedReport",
    "SuiteQLEngine",
    "SuiteQLError",
    "client_assertion",
    "compile_query",
    "decimal_text",
    "erp_dumps",
    "erp_loads",
    "generate_inventory_items",
    "generate_key_pair",
    "parse_date_literal",
]
