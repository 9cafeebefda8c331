"""Group finance settings: ``VOUCHFLOW_FINANCE_*`` environment variables (or a Prefect block)."""

from __future__ import annotations

from importlib import resources

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.errors import ConfigurationError
from connectors.redact import register_secret


def shipped_wsdl() -> str:
    return str(resources.files("connectors.finance") / "groupfinance.wsdl")


class FinanceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_FINANCE_", extra="ignore")

    url: str = Field(default="", description="The posting service endpoint (soap:address).")
    username: SecretStr = SecretStr("")
    password: SecretStr = SecretStr("")
    company_code: str = Field(default="VF01", description="Company code of every posting.")
    wsdl: str = Field(default_factory=shipped_wsdl, description="Local path of the WSDL.")
    concurrency: int = Field(default=4, ge=1)
    timeout: float = 60.0

    def check(self) -> FinanceSettings:
        missing = [name for name in ("username", "password")
                   if not getattr(self, name).get_secret_value()]
        if not self.url:
            missing.insert(0, "url")
        if missing:
            raise ConfigurationError(
                "missing group finance settings: "
                + ", ".join(f"VOUCHFLOW_FINANCE_{m.upper()}" for m in missing),
                system="finance")
        register_secret(self.password)
        return self
