"""Downstream subscribers: signed event webhooks over the shared HTTP toolkit."""

from connectors.subscriber.client import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    Attempt,
    SubscriberClient,
)

__all__ = ["EVENT_ID_HEADER", "EVENT_TYPE_HEADER", "SIGNATURE_HEADER", "Attempt",
           "SubscriberClient"]
