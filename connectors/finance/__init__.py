"""The group finance connector (SOAP 1.1 over zeep, WSDL shipped here)."""

from connectors.finance.client import FinanceClient, safe_parse
from connectors.finance.config import FinanceSettings
from connectors.finance.records import (
    Posting,
    PostingKind,
    PostingLine,
    PostingResult,
    PostingStatus,
    PostingSummary,
)

__all__ = ["FinanceClient", "FinanceSettings", "Posting", "PostingKind", "PostingLine",
           "PostingResult", "PostingStatus", "PostingSummary", "safe_parse"]
