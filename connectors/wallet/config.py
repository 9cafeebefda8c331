"""Wallet site settings: one file lists the sites; environment variables give URLs and keys.

``VOUCHFLOW_SITES_FILE`` names the file (default: the twelve sites shipped beside this module).
Per site, ``VOUCHFLOW_WALLET_<CODE>_BASE_URL`` and ``VOUCHFLOW_WALLET_<CODE>_API_KEY``;
without a per-site URL the site lives at ``{VOUCHFLOW_WALLET_BASE_URL}/{code}`` (the local
sandbox serves every site under one address).
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.errors import ConfigurationError
from connectors.redact import register_secret

DEFAULT_BASE_URL = "http://127.0.0.1:8702"


class WalletSiteSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str
    country: str
    currency: str
    timezone: str
    base_url: str
    api_key: SecretStr = SecretStr("")
    webhook_secret: SecretStr = SecretStr("")
    """Shared secret of the site's signed webhooks (HMAC-SHA256 over ``t.body``)."""
    concurrency: int = Field(default=4, ge=1)
    batch_size: int = Field(default=500, ge=1, le=500)


def _env(code: str, what: str) -> str | None:
    return os.environ.get(f"VOUCHFLOW_WALLET_{code.upper()}_{what}")


def load_sites(path: str | Path | None = None) -> dict[str, WalletSiteSettings]:
    """All configured sites by code, with URLs and keys resolved from the environment."""
    source = path or os.environ.get("VOUCHFLOW_SITES_FILE")
    if source:
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read sites file {source}: {exc}",
                                     system="wallet") from None
    else:
        text = (resources.files("connectors.wallet") / "sites.default.toml").read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"sites file {source or 'default'}: {exc}",
                                 system="wallet") from None
    default_base = os.environ.get("VOUCHFLOW_WALLET_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    sites: dict[str, WalletSiteSettings] = {}
    for code, entry in (data.get("sites") or {}).items():
        base_url = _env(code, "BASE_URL") or entry.get("base_url") or f"{default_base}/{code}"
        api_key = _env(code, "API_KEY") or ""
        webhook_secret = _env(code, "WEBHOOK_SECRET") or ""
        register_secret(api_key)
        register_secret(webhook_secret)
        fields = {k: v for k, v in entry.items()
                  if k not in {"base_url", "api_key", "webhook_secret"}}
        sites[code] = WalletSiteSettings(code=code, base_url=base_url,
                                         api_key=SecretStr(api_key),
                                         webhook_secret=SecretStr(webhook_secret), **fields)
    return sites
