"""Simulated external systems (ASGI apps on loopback) for the demo and the tests.

Written from the protocol descriptions in DESIGN.md / CONTRACTS.md / docs/erp-records.md and
never importing ``connectors``, ``mappings``, ``flows``, ``state`` or ``canonical``: a sandbox
that shared code with its client would only confirm itself. See ``sandbox/README.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from sandbox.core import ServedSandbox
    from sandbox.erp import ErpSandbox
    from sandbox.finance import FinanceSandbox
    from sandbox.sites import Site
    from sandbox.supplier import SupplierSandbox
    from sandbox.wallet import WalletSandbox

__all__ = ["DEFAULT_ERP_PORT", "DEFAULT_FINANCE_PORT", "DEFAULT_SUPPLIER_PORT",
           "DEFAULT_WALLET_PORT", "SandboxSet", "serve_all", "state_dir"]

DEFAULT_ERP_PORT = 8701
DEFAULT_WALLET_PORT = 8702
DEFAULT_FINANCE_PORT = 8703
DEFAULT_SUPPLIER_PORT = 8704


def state_dir(home: Path) -> Path:
    """Where the sandboxes keep their data under a vouchflow home directory."""
    return Path(home) / "sandbox"


class SandboxSet:
    """The ERP and the wallet sites served together; ``stop()`` saves their data."""

    def __init__(
        self,
        erp: ErpSandbox,
        wallet: WalletSandbox,
        erp_served: ServedSandbox,
        wallet_served: ServedSandbox,
        home: Path | None,
        finance: FinanceSandbox | None = None,
        finance_served: ServedSandbox | None = None,
        supplier: SupplierSandbox | None = None,
        supplier_served: ServedSandbox | None = None,
    ) -> None:
        self.erp, self.wallet = erp, wallet
        self.erp_served, self.wallet_served = erp_served, wallet_served
        self.finance, self.finance_served = finance, finance_served
        self.supplier, self.supplier_served = supplier, supplier_served
        self.home = home
        self._stopped = False

    @property
    def erp_url(self) -> str:
        return self.erp_served.base_url

    @property
    def wallet_url(self) -> str:
        return self.wallet_served.base_url

    @property
    def finance_url(self) -> str | None:
        """The group finance SOAP endpoint (``.../soap/groupfinance``)."""
        if self.finance is None or self.finance_served is None:
            return None
        return self.finance.endpoint_url(self.finance_served.base_url)

    @property
    def supplier_url(self) -> str | None:
        """The supplier API's base (the API is under ``{base}/v1``); one sandbox plays every
        API supplier."""
        return self.supplier_served.base_url if self.supplier_served is not None else None

    def site_urls(self) -> dict[str, str]:
        """Each site's base URL (the API is under ``{base}/api/v1``)."""
        return {code: f"{self.wallet_url}/{code}" for code in self.wallet.sites}

    def env(self) -> dict[str, str]:
        """Environment variables that point vouchflow's connectors at these sandboxes
        (sandbox-only credentials; nothing real is exposed)."""
        creds = self.erp.credentials
        out = {
            "VOUCHFLOW_ERP_ACCOUNT": creds.account,
            "VOUCHFLOW_ERP_BASE_URL": self.erp_url,
            "VOUCHFLOW_ERP_CONSUMER_KEY": creds.consumer_key,
            "VOUCHFLOW_ERP_CONSUMER_SECRET": creds.consumer_secret,
            "VOUCHFLOW_ERP_TOKEN_ID": creds.token_id,
            "VOUCHFLOW_ERP_TOKEN_SECRET": creds.token_secret,
            "VOUCHFLOW_ERP_TIMEZONE": self.erp.account_timezone.key,
            "VOUCHFLOW_WALLET_BASE_URL": self.wallet_url,
        }
        for code in self.wallet.sites:
            out[f"VOUCHFLOW_WALLET_{code.upper()}_API_KEY"] = self.wallet.api_key(code)
            out[f"VOUCHFLOW_WALLET_{code.upper()}_WEBHOOK_SECRET"] = \
                self.wallet.webhook_secret(code)
        if self.finance is not None and self.finance_url:
            out["VOUCHFLOW_FINANCE_URL"] = self.finance_url
            out["VOUCHFLOW_FINANCE_USERNAME"] = self.finance.username
            out["VOUCHFLOW_FINANCE_PASSWORD"] = self.finance.password
        if self.supplier is not None and self.supplier_url:
            out["VOUCHFLOW_SUPPLIER_URL"] = self.supplier_url
            out["VOUCHFLOW_SUPPLIER_TOKEN"] = self.supplier.token
        return out

    def save(self) -> None:
        if self.home is None:
            return
        self.erp.save()
        self.wallet.save()
        if self.finance is not None:
            self.finance.save()
        if self.supplier is not None:
            self.supplier.save()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.erp_served.stop()
            self.wallet_served.stop()
            if self.finance_served is not None:
                self.finance_served.stop()
            if self.supplier_served is not None:
                self.supplier_served.stop()
        finally:
            self.save()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_all(
    home: Path | None,
    erp_port: int = DEFAULT_ERP_PORT,
    wallet_port: int = DEFAULT_WALLET_PORT,
    seed_skus: int = 1000,
    invalid: int = 7,
    sites: Iterable[Site | Mapping[str, Any]] | None = None,
    *,
    host: str = "127.0.0.1",
    seed: int = 0,
    modified_at: str | None = None,
    erp_options: Mapping[str, Any] | None = None,
    finance_port: int | None = None,
    supplier_port: int | None = None,
) -> SandboxSet:
    """Build, load (from ``home``, when saved before) or seed, and serve both sandboxes.

    The ERP is seeded only when it holds no inventory items, so running the demo twice, in two
    processes, sees the same ERP and wallet data the second time. ``sites=None`` reads the
    default site file (``connectors/wallet/sites.default.toml``) as data. The group finance
    service is served too unless ``finance_port`` is negative (0 picks a free port; None
    means the same as erp_port being 0: free when the others are, else 8703); so is the
    supplier API (``supplier_port``, 8704).
    """
    from sandbox.core import serve
    from sandbox.erp import ErpSandbox
    from sandbox.sites import normalize_sites
    from sandbox.wallet import WalletSandbox

    site_list = normalize_sites(sites)
    directory = state_dir(home) if home is not None else None
    erp = ErpSandbox(
        sites=site_list,
        state_path=directory / "erp.json" if directory else None,
        **dict(erp_options or {}),
    )
    wallet = WalletSandbox(site_list, state_path=directory / "wallet.json" if directory else None)
    if directory is not None:
        erp.load_state(directory / "erp.json")
        wallet.load_state(directory / "wallet.json")
    if erp.count("inventoryItem") == 0 and (seed_skus or invalid):
        erp.seed_inventory_items(seed_skus, invalid, seed=seed, modified_at=modified_at)
    from sandbox.finance import FinanceSandbox

    finance = FinanceSandbox(state_path=directory / "finance.json" if directory else None)
    if directory is not None:
        finance.load_state(directory / "finance.json")
    if finance_port is None:
        finance_port = 0 if erp_port == 0 else DEFAULT_FINANCE_PORT
    from sandbox.supplier import SupplierSandbox

    supplier = SupplierSandbox(state_path=directory / "supplier.json" if directory else None)
    if directory is not None:
        supplier.load_state(directory / "supplier.json")
    if supplier_port is None:
        supplier_port = 0 if erp_port == 0 else DEFAULT_SUPPLIER_PORT
    supplier_served: ServedSandbox | None = None
    served: list[ServedSandbox] = []
    try:
        served.append(serve(erp, host=host, port=erp_port))
        served.append(serve(wallet, host=host, port=wallet_port))
        if finance_port >= 0:
            served.append(serve(finance, host=host, port=finance_port))
        if supplier_port >= 0:
            supplier_served = serve(supplier, host=host, port=supplier_port)
            served.append(supplier_served)
    except BaseException:
        for one in served:
            one.stop()
        raise
    group = SandboxSet(erp, wallet, served[0], served[1], Path(home) if home else None,
                       finance=finance if finance_port >= 0 else None,
                       finance_served=served[2] if finance_port >= 0 else None,
                       supplier=supplier if supplier_served is not None else None,
                       supplier_served=supplier_served)
    group.save()
    return group
