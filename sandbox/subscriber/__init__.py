"""Downstream subscribers of vouchflow's events (see ``sandbox/subscriber/app.py``)."""

from __future__ import annotations

from sandbox.subscriber.app import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    SubscriberSandbox,
    signature_header,
)

__all__ = ["EVENT_ID_HEADER", "EVENT_TYPE_HEADER", "SIGNATURE_HEADER", "SubscriberSandbox",
           "signature_header"]
