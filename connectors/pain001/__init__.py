"""ISO 20022 pain.001.001.09 (customer credit transfer initiation): vendor payment runs.

Generic pain.001.001.09, not the SEPA subset: suppliers are paid in several currencies and
banks outside the euro area, so accounts may be IBANs or other identifiers and amounts carry
their own currency. Built with lxml, element by element in the schema's order, and validated
against the official XSD (``xsd/pain.001.001.09.xsd``) with xmlschema before it leaves.
"""

from __future__ import annotations

from connectors.pain001.writer import (
    NAMESPACE,
    Creditor,
    Debtor,
    Pain001Error,
    Transfer,
    build_pain001,
    payment_information_id,
    schema,
    validate,
)

__all__ = ["NAMESPACE", "Creditor", "Debtor", "Pain001Error", "Transfer", "build_pain001",
           "payment_information_id", "schema", "validate"]
