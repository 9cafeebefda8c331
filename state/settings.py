"""Where vouchflow keeps its state: ``VOUCHFLOW_HOME`` and ``VOUCHFLOW_DATABASE_URL``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StateSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_", extra="ignore")

    home: Path = Field(default=Path("~/.vouchflow"), description="Directory for local state.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the state database; default a SQLite file in home.",
    )

    def resolved_home(self) -> Path:
        home = self.home.expanduser()
        home.mkdir(parents=True, exist_ok=True)
        return home

    def resolved_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home() / 'state.db'}"
