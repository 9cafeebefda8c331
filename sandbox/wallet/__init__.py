"""Wallet sites sandbox (see ``sandbox/README.md``)."""

from __future__ import annotations

from sandbox.sites import Site, default_api_key, load_sites
from sandbox.wallet.app import (
    API_PREFIX,
    MAX_BATCH,
    MAX_PAGE,
    PRODUCT_FIELDS,
    SiteState,
    WalletError,
    WalletSandbox,
    validate_product,
)

__all__ = [
    "API_PREFIX",
    "MAX_BATCH",
    "MAX_PAGE",
    "PRODUCT_FIELDS",
    "Site",
    "SiteState",
    "WalletError",
    "WalletSandbox",
    "default_api_key",
    "load_sites",
    "validate_product",
]
