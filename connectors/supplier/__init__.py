"""The API supplier connector: codes issued at the moment of sale (CONTRACTS.md)."""

from connectors.supplier.client import (
    Issue,
    IssuedCode,
    Redemption,
    Statement,
    SupplierClient,
)
from connectors.supplier.config import SupplierSettings, env_name, supplier_settings

__all__ = ["Issue", "IssuedCode", "Redemption", "Statement", "SupplierClient",
           "SupplierSettings", "env_name", "supplier_settings"]
