"""API supplier settings: base URL and bearer token per vendor, from the environment.

A vendor is named by its slug (``state.procurement.Vendor.slug``). Per vendor,
``VOUCHFLOW_SUPPLIER_<SLUG>_URL`` and ``VOUCHFLOW_SUPPLIER_<SLUG>_TOKEN`` (the slug upper-cased,
``-`` as ``_``); a vendor without its own URL uses ``VOUCHFLOW_SUPPLIER_URL`` and
``VOUCHFLOW_SUPPLIER_TOKEN`` (the local sandbox plays every supplier under one address). A
vendor's own URL never borrows the shared token: credentials go only where they belong.
``..._CONCURRENCY`` sets vouchflow's share of the supplier's capacity (default 4).
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.errors import ConfigurationError
from connectors.redact import register_secret

ENV = "VOUCHFLOW_SUPPLIER"


class SupplierSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    slug: str = Field(min_length=1, max_length=32)
    base_url: str = ""
    """Without ``/v1``."""
    token: SecretStr = SecretStr("")
    concurrency: int = Field(default=4, ge=1)

    def check(self) -> SupplierSettings:
        missing = [n for n, v in (("URL", self.base_url),
                                  ("TOKEN", self.token.get_secret_value())) if not v]
        if missing:
            raise ConfigurationError(
                f"supplier {self.slug}: set " + " and ".join(
                    f"{env_name(self.slug, m)} (or {ENV}_{m})" for m in missing),
                system=f"supplier:{self.slug}")
        return self


def env_name(slug: str, what: str) -> str:
    return f"{ENV}_{re.sub(r'[^A-Za-z0-9]', '_', slug).upper()}_{what}"


def supplier_settings(slug: str) -> SupplierSettings:
    """The vendor's settings from the environment (unchecked: ``check()`` says what is
    missing)."""
    own_url = os.environ.get(env_name(slug, "URL"))
    if own_url:
        token = os.environ.get(env_name(slug, "TOKEN"), "")
    else:
        own_url = os.environ.get(f"{ENV}_URL", "")
        token = os.environ.get(env_name(slug, "TOKEN")) or os.environ.get(f"{ENV}_TOKEN", "")
    register_secret(token)
    concurrency = os.environ.get(env_name(slug, "CONCURRENCY")) or os.environ.get(
        f"{ENV}_CONCURRENCY") or "4"
    return SupplierSettings(slug=slug, base_url=own_url.rstrip("/"), token=SecretStr(token),
                            concurrency=int(concurrency))
