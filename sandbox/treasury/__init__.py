"""The treasury sandbox: remittance batches over REST (CONTRACTS.md "Treasury")."""

from sandbox.treasury.app import TreasurySandbox

__all__ = ["TreasurySandbox"]
