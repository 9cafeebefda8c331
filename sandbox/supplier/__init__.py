"""The supplier sandbox: codes issued on demand over REST (CONTRACTS.md "Supplier API")."""

from sandbox.supplier.app import DEFAULT_TOKEN, SupplierSandbox

__all__ = ["DEFAULT_TOKEN", "SupplierSandbox"]
