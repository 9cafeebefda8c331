"""Credentials from Prefect blocks, with environment variables as the fallback.

Each external system has a block type of vouchflow's own with ``SecretStr`` fields. A flow
asks ``erp_settings()`` (and its siblings); when ``VOUCHFLOW_ERP_BLOCK`` names a saved block,
the block's values win over the environment, so credentials can be rotated in the Prefect UI
without touching workers. Block values never reach logs: they are registered with the log
redaction filter as soon as they are loaded.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from connectors.erp import ErpSettings
from connectors.finance import FinanceSettings
from connectors.redact import register_secret
from connectors.supplier import SupplierSettings, env_name
from connectors.supplier import supplier_settings as supplier_env_settings


class ErpCredentials(Block):
    """NetSuite account access for vouchflow (token-based auth or OAuth 2.0)."""

    _block_type_name = "vouchflow ERP credentials"
    _block_type_slug = "vouchflow-erp-credentials"
    _description = "NetSuite account, token-based auth (OAuth 1.0a) or OAuth 2.0 credentials."

    account: str = Field(description="Account id, e.g. 123456_SB1.")
    base_url: str | None = Field(default=None, description="Override of the account's URL.")
    auth_method: Literal["tba", "oauth2"] = "tba"
    consumer_key: SecretStr | None = None
    consumer_secret: SecretStr | None = None
    token_id: SecretStr | None = None
    token_secret: SecretStr | None = None
    client_id: SecretStr | None = None
    certificate_id: str | None = None
    private_key: SecretStr | None = None
    concurrency: int = Field(default=5, description="vouchflow's share of the account limit.")
    timezone: str = "UTC"

    def settings(self) -> ErpSettings:
        values = {k: v for k, v in self.model_dump().items()
                  if v is not None and k in ErpSettings.model_fields}
        return ErpSettings(**values).check()


class FinanceCredentials(Block):
    """The group finance posting service: endpoint and WS-Security user."""

    _block_type_name = "vouchflow group finance credentials"
    _block_type_slug = "vouchflow-finance-credentials"

    url: str
    username: SecretStr
    password: SecretStr
    company_code: str = "VF01"

    def settings(self) -> FinanceSettings:
        values = {k: v for k, v in self.model_dump().items()
                  if v is not None and k in FinanceSettings.model_fields}
        return FinanceSettings(**values).check()


class SupplierCredentials(Block):
    """An API supplier (a vendor whose codes are issued on demand): base URL and token."""

    _block_type_name = "vouchflow API supplier credentials"
    _block_type_slug = "vouchflow-supplier-credentials"

    base_url: str = Field(description="The supplier API's base, without /v1.")
    token: SecretStr
    concurrency: int = Field(default=4, description="vouchflow's share of the supplier's "
                                                    "capacity.")

    def settings(self, slug: str) -> SupplierSettings:
        register_secret(self.token)
        return SupplierSettings(slug=slug, base_url=self.base_url.rstrip("/"), token=self.token,
                                concurrency=self.concurrency).check()


BLOCK_TYPES: list[type[Block]] = [ErpCredentials, FinanceCredentials, SupplierCredentials]


async def _from_block(env_var: str, block_type: type[Any]) -> Any | None:
    name = os.environ.get(env_var)
    if not name:
        return None
    block = await block_type.aload(name)
    return block.settings()


async def erp_settings() -> ErpSettings:
    """The ERP settings: the block named by VOUCHFLOW_ERP_BLOCK, else the environment."""
    return await _from_block("VOUCHFLOW_ERP_BLOCK", ErpCredentials) or ErpSettings()


async def finance_settings() -> FinanceSettings:
    return await _from_block("VOUCHFLOW_FINANCE_BLOCK", FinanceCredentials) or FinanceSettings()


async def supplier_settings(slug: str) -> SupplierSettings:
    """A vendor's supplier API settings: the block named by ``VOUCHFLOW_SUPPLIER_<SLUG>_BLOCK``,
    else the environment (``connectors.supplier.config``). Raises ``ConfigurationError``
    naming what to set when neither gives a URL and a token."""
    name = os.environ.get(env_name(slug, "BLOCK"))
    if name:
        block = await SupplierCredentials.aload(name)
        return block.settings(slug)
    return supplier_env_settings(slug).check()


async def register_block_types() -> None:
    """Make the block types known to the Prefect server (so the UI can create them)."""
    for block_type in BLOCK_TYPES:
        await block_type.aregister_type_and_schema()
