"""The wallet site connector (twelve sites, one client each)."""

from connectors.wallet.client import WalletClient
from connectors.wallet.config import WalletSiteSettings, load_sites

__all__ = ["WalletClient", "WalletSiteSettings", "load_sites"]
