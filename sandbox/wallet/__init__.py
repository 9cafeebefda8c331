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
from sandbox.wallet.base import default_webhook_secret
from sandbox.wallet.orders import ORDER_STATUSES, PAYMENT_METHODS, PROVIDERS
from sandbox.wallet.webhooks import EVENT_TYPES, signature_header

__all__ = [
    "API_PREFIX",
    "EVENT_TYPES",
    "MAX_BATCH",
    "MAX_PAGE",
    "ORDER_STATUSES",
    "PAYMENT_METHODS",
    "PRODUCT_FIELDS",
    "PROVIDERS",
    "Site",
    "SiteState",
    "WalletError",
    "WalletSandbox",
    "default_api_key",
    "default_webhook_secret",
    "load_sites",
    "signature_header",
    "validate_product",
]
