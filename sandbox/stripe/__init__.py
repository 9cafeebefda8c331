"""Stripe-style payments API sandbox: balance transactions and payouts (see ``app.py``)."""

from __future__ import annotations

from sandbox.stripe.app import DEFAULT_API_KEY, MAX_LIMIT, StripeSandbox

__all__ = ["DEFAULT_API_KEY", "MAX_LIMIT", "StripeSandbox"]
