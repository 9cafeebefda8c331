"""The wallet sites the sandboxes simulate, read as data.

The site list lives in ``connectors/wallet/sites.default.toml`` (the connectors' default
configuration). The sandbox reads that file as plain TOML data and never imports the
connectors package, so the two sides stay independent implementations of one contract.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SITES_FILE",
    "Site",
    "default_api_key",
    "load_sites",
    "normalize_sites",
]

DEFAULT_SITES_FILE = Path(__file__).resolve().parent.parent / "connectors" / "wallet" / "sites.default.toml"


def default_api_key(code: str) -> str:
    """The sandbox API key of a site when none is configured (local sandbox only)."""
    return f"sandbox-key-{code}"


@dataclass(frozen=True)
class Site:
    code: str
    currency: str
    timezone: str
    api_key: str
    name: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def load_sites(path: Path | str = DEFAULT_SITES_FILE) -> list[Site]:
    """Sites of a ``[sites.<code>]`` TOML file; a missing ``api_key`` gets the sandbox key."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return [
        Site(
            code=code,
            currency=str(entry["currency"]),
            timezone=str(entry["timezone"]),
            api_key=str(entry.get("api_key") or default_api_key(code)),
            name=str(entry.get("name", "")),
        )
        for code, entry in data.get("sites", {}).items()
    ]


def normalize_sites(sites: Iterable[Site | Mapping[str, Any]] | None) -> list[Site]:
    """Accept ``Site`` objects or dicts ``{code, currency, timezone, api_key?}``; ``None``
    means the default site file."""
    if sites is None:
        return load_sites()
    out: list[Site] = []
    for s in sites:
        if isinstance(s, Site):
            out.append(s)
        else:
            out.append(
                Site(
                    code=str(s["code"]),
                    currency=str(s["currency"]),
                    timezone=str(s.get("timezone", "UTC")),
                    api_key=str(s.get("api_key") or default_api_key(str(s["code"]))),
                    name=str(s.get("name", "")),
                )
            )
    codes = [s.code for s in out]
    if len(set(codes)) != len(codes):
        raise ValueError(f"duplicate site codes in {codes}")
    return out
