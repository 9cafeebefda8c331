"""The ERP (NetSuite-style REST) connector."""

from connectors.erp.client import BatchItemResult, ErpClient, format_q_date, suiteql_time
from connectors.erp.config import ErpSettings, host_for, realm_for
from connectors.erp.records import InventoryItem

__all__ = ["BatchItemResult", "ErpClient", "ErpSettings", "InventoryItem", "format_q_date", "host_for", "realm_for", "suiteql_time"]
