"""ERP connection settings: environment variables ``VOUCHFLOW_ERP_*`` (or a Prefect block)."""

from __future__ import annotations

from pathlib import Path
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
    auth_method: Literal["tba", "oauth2"] = Field(
        default="tba",
        description="tba: token-based auth (OAuth 1.0a, HMAC-SHA256); oauth2: client "
        "credentials with a JWT assertion.",
    )
    consumer_key: SecretStr = SecretStr("")
    consumer_secret: SecretStr = SecretStr("")
    token_id: SecretStr = SecretStr("")
    token_secret: SecretStr = SecretStr("")
    client_id: SecretStr = SecretStr("")
    certificate_id: str = ""
    private_key: SecretStr = Field(default=SecretStr(""), description="PEM private key.")
    private_key_file: str | None = None
    jwt_algorithm: Literal["PS256", "ES256"] = "PS256"
    concurrency: int = Field(
        default=5, ge=1,
        description="vouchflow's share of the account's concurrency limit (shared with other "
        "integrations).",
    )
    timezone: str = Field(default="UTC", description="The account's time zone preference.")
    job_seconds_base: float = Field(
        default=0.02, ge=0, description="First wait before reading a batch job's results.")
    job_seconds_per_record: float = Field(default=0.0002, ge=0)
    page_size: int = Field(default=1000, ge=1, le=1000)
    catalog_read: Literal["suiteql", "records"] = Field(
        default="suiteql",
        description="How the catalogue is read: one SuiteQL query (NetSuite's way for bulk "
        "reads), or the record collection and one GET per item.",
    )
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

    def key_pem(self) -> str:
        if self.private_key.get_secret_value():
            return self.private_key.get_secret_value()
        if self.private_key_file:
            try:
                return Path(self.private_key_file).expanduser().read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read VOUCHFLOW_ERP_PRIVATE_KEY_FILE: {exc.strerror}", system="erp"
                ) from None
        return ""

    def check(self) -> ErpSettings:
        if self.auth_method == "tba":
            needed = ("consumer_key", "consumer_secret", "token_id", "token_secret")
            missing = [n for n in needed if not getattr(self, n).get_secret_value()]
        else:
            missing = [n for n in ("client_id",) if not getattr(self, n).get_secret_value()]
            if not self.certificate_id:
                missing.append("certificate_id")
            if not self.key_pem():
                missing.append("private_key")
        if not self.account:
            missing.insert(0, "account")
        if missing:
            raise ConfigurationError(
                "missing ERP settings: " + ", ".join(f"VOUCHFLOW_ERP_{m.upper()}" for m in missing),
                system="erp",
            )
        for secret in (self.consumer_key, self.consumer_secret, self.token_id, self.token_secret,
                       self.client_id, self.private_key):
            register_secret(secret)
        return self
