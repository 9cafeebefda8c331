"""ERP connection settings: environment variables ``VOUCHFLOW_ERP_*`` (or a Prefect block)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.errors import ConfigurationError
from connectors.redact import register_secret


def realm_for(account: str) -> str:
    """``123456-sb1`` or ``123456_sb1`` -> ``123456_SB1`` (the OAuth realm)."""
    return account.strip().upper().replace("-", "_")


def host_for(account: str) -> str:
    """``123456_SB1`` -> ``123456-sb1`` (the account's host name part)."""
    return account.strip().lower().replace("_", "-")


class ErpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_ERP_", extra="ignore")

    account: str = Field(default="", description="NetSuite account id, e.g. 123456_SB1.")
    base_url: str | None = Field(
        default=None,
        description="Override of https://{account-host}.suitetalk.api.netsuite.com.",
    )
    consumer_key: SecretStr = SecretStr("")
    consumer_secret: SecretStr = SecretStr("")
    token_id: SecretStr = SecretStr("")
    token_secret: SecretStr = SecretStr("")
    concurrency: int = Field(
        default=5, ge=1,
        description="vouchflow's share of the account's concurrency limit (shared with other "
        "integrations).",
    )
    timezone: str = Field(default="UTC", description="The account's time zone preference.")
    page_size: int = Field(default=1000, ge=1, le=1000)
    q_time_precision: Literal["minute", "day"] = Field(
        default="minute",
        description="Whether lastModifiedDate filters carry a time (M/D/YYYY h:mm am) or only "
        "a date; with 'day' a sync re-reads the whole day and skips unchanged items.",
    )
    read_timeout: float = 60.0

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if not self.account:
            raise ConfigurationError("set VOUCHFLOW_ERP_ACCOUNT or VOUCHFLOW_ERP_BASE_URL",
                                     system="erp")
        return f"https://{host_for(self.account)}.suitetalk.api.netsuite.com"

    def check(self) -> ErpSettings:
        missing = [
            name for name in ("consumer_key", "consumer_secret", "token_id", "token_secret")
            if not getattr(self, name).get_secret_value()
        ]
        if not self.account:
            missing.insert(0, "account")
        if missing:
            raise ConfigurationError(
                "missing ERP settings: " + ", ".join(f"VOUCHFLOW_ERP_{m.upper()}" for m in missing),
                system="erp",
            )
        for secret in (self.consumer_key, self.consumer_secret, self.token_id, self.token_secret):
            register_secret(secret)
        return self
