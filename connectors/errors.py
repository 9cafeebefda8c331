"""One error hierarchy for every connector; the type says what the caller should do.

- ``RetriableError``: try again later (transport trouble, 5xx, rate limits).
- ``FatalError``: retrying will not help; ``AuthError`` means fix credentials,
  ``InvalidRecordError`` means the record is bad (quarantine it, carry on with the rest).

Errors carry the request and response as keyword arguments (as httpx does) but their message
never includes headers or bodies that could hold secrets.
"""

from __future__ import annotations

from typing import Any

import httpx


class ConnectorError(Exception):
    def __init__(
        self,
        message: str,
        *,
        system: str | None = None,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
        code: str | None = None,
        details: list[Any] | None = None,
    ) -> None:
        self.system = system
        self.request = request
        self.response = response
        self.code = code
        self.details = details or []
        prefix = f"{system}: " if system else ""
        super().__init__(prefix + message)

    @property
    def status_code(self) -> int | None:
        return self.response.status_code if self.response is not None else None


class RetriableError(ConnectorError):
    """Transient: the same request may succeed later."""


class TransportError(RetriableError):
    """Connect errors, timeouts, connections dropped before a full answer arrived."""


class ServerError(RetriableError):
    """The far end failed (5xx)."""


class RateLimitedError(RetriableError):
    """The far end asked us to slow down (429, or a vendor code that means the same)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class FatalError(ConnectorError):
    """Retrying the same request will not help."""


class AuthError(FatalError):
    """Credentials were refused: fix them; retrying would only lock the account."""


class InvalidRecordError(FatalError):
    """The far end refused a record (or some records of a batch) as invalid."""


class NotFoundError(FatalError):
    pass


class ConflictError(FatalError):
    pass


class MalformedResponseError(FatalError):
    """The answer could not be read (bad JSON, bad XML, missing fields)."""


class PaginationError(FatalError):
    """Paging went wrong (the far end repeated a cursor or offset): stop rather than loop."""


class ConfigurationError(FatalError):
    """Settings are missing or contradictory (no base URL, no credentials)."""
