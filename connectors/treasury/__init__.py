"""Treasury: closed remittance batches over REST (CONTRACTS.md)."""

from connectors.treasury.client import TreasuryClient, TreasurySettings

__all__ = ["TreasuryClient", "TreasurySettings"]
