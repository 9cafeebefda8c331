"""ISO 20022 pain.002 (customer payment status report): the bank's answer to a payment run's
pain.001, read and validated against the official XSD of its version (``xsd/``).

A report refers to the original message (``original_message_id``: the run number) and, per
transaction, to its end-to-end id and instruction id, with a status the bank may leave to
the transaction's block or to the whole group (``StatusReport.status_of``). ``outcome`` says
what a status means for the payment: accepted, rejected or still pending.
"""

from __future__ import annotations

from connectors.pain002.reader import (
    ACCEPTED_STATUSES,
    REASONS,
    REJECTED_STATUSES,
    VERSIONS,
    Outcome,
    Pain002Error,
    PaymentInformationStatus,
    StatusReason,
    StatusReport,
    TransactionStatus,
    outcome,
    read_pain002,
    schema,
)

__all__ = ["ACCEPTED_STATUSES", "REASONS", "REJECTED_STATUSES", "VERSIONS", "Outcome",
           "Pain002Error", "PaymentInformationStatus", "StatusReason", "StatusReport",
           "TransactionStatus", "outcome", "read_pain002", "schema"]
