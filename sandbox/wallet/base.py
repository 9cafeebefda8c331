"""The wallet sandbox's base: the sites, their clocks and the webhook outbox. The parts of the
API (products, inventory and batches, orders, deliveries and refunds, the sales generator)
build on it; ``sandbox.wallet.app.WalletSandbox`` puts them together."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response

from sandbox.core import Sandbox, dumps
from sandbox.money import MINOR_UNITS
from sandbox.sites import Site, normalize_sites
from sandbox.wallet.common import SiteState, WalletError, format_stamp, micros
from sandbox.wallet.webhooks import WebhookOutbox, replay, signature_header

__all__ = ["WalletBase", "default_webhook_secret"]


def default_webhook_secret(code: str) -> str:
    """The webhook signing secret of a site when none is configured (sandbox only)."""
    return f"sandbox-webhook-secret-{code}"


class WalletBase(Sandbox):
    """All wallet sites in one app, each under ``/{code}``."""

    name = "wallet"

    def __init__(
        self,
        sites: Iterable[Site | Mapping[str, Any]] | None = None,
        *,
        minor_units: Mapping[str, int] | None = None,
        clock: Callable[[], datetime] | None = None,
        state_path: Path | str | None = None,
        request_log_size: int = 10_000,
        webhook_url: str | None = None,
        webhook_secrets: Mapping[str, str] | None = None,
        duplicate_rate: float = 0.1,
        shuffle_window: int = 5,
        webhook_seed: int | None = None,
        webhook_backoff_s: tuple[float, float] = (0.05, 5.0),
        webhook_max_attempts: int | None = None,
        webhook_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(clock=clock, state_path=state_path, request_log_size=request_log_size)
        self.sites: dict[str, SiteState] = {
            s.code: SiteState(s, ZoneInfo(s.timezone)) for s in normalize_sites(sites)
        }
        self.minor_units = {**MINOR_UNITS, **(minor_units or {})}
        self.webhook_secrets: dict[str, str] = {
            code: default_webhook_secret(code) for code in self.sites
        }
        self.webhook_secrets.update(webhook_secrets or {})
        self.outbox = WebhookOutbox(
            self.webhook_secret, url=webhook_url, duplicate_rate=duplicate_rate,
            shuffle_window=shuffle_window, seed=webhook_seed, backoff_s=webhook_backoff_s,
            max_attempts=webhook_max_attempts, timeout_s=webhook_timeout_s,
        )  # fmt: skip

    # ---- sites --------------------------------------------------------------------------------

    def site_url(self, server_base_url: str, code: str) -> str:
        """The site's base URL (the connector appends ``/api/v1/...``)."""
        self._site(code)
        return f"{server_base_url.rstrip('/')}/{code}"

    def api_key(self, code: str) -> str:
        return self._site(code).site.api_key

    def site_timezone(self, code: str) -> ZoneInfo:
        """The site's timezone (``.key`` is its IANA name): its timestamps and day cut-off."""
        return self._site(code).tz

    def site_currency(self, code: str) -> str:
        return self._site(code).site.currency

    # ---- webhooks -----------------------------------------------------------------------------

    @property
    def webhook_url(self) -> str | None:
        """vouchflow's inbound base: events go to ``{webhook_url}/wallet/{site}/events``;
        ``None``: events are kept pending and not sent. Setting it starts delivery."""
        return self.outbox.url

    @webhook_url.setter
    def webhook_url(self, value: str | None) -> None:
        self.outbox.url = value

    def webhook_secret(self, code: str) -> str:
        self._site(code)
        return self.webhook_secrets[code]

    def sign(self, code: str, body: bytes, t: int) -> str:
        """The ``X-Wallet-Signature`` value of ``body`` from site ``code`` at unix time ``t``."""
        return signature_header(self.webhook_secret(code), body, t)

    def events(self, site: str | None = None) -> list[dict[str, Any]]:
        """Every event created, oldest first: ``seq, id, site, type, created_at, body`` (the
        exact bytes sent), ``event`` (the body parsed), ``headers`` (of the first attempt, or
        ``None`` when never sent), ``attempts``, ``delivered``, ``last_status``."""
        return self.outbox.events(site)

    def deliver_events(
        self,
        events: Iterable[Mapping[str, Any]],
        url: str,
        *,
        shuffle: bool = False,
        duplicates: float = 0.0,
        seed: int = 0,
        t: int | None = None,
    ) -> list[int]:
        """(Re)play events synchronously to ``{url}/wallet/{site}/events``, each signed with a
        fresh ``t`` (or the ``t`` given, e.g. an old one); returns the statuses in the order
        sent. Does not touch the outbox."""
        return replay(events, url, self.webhook_secret, shuffle=shuffle,
                      duplicates=duplicates, seed=seed, t=t)

    def webhook_stats(self) -> dict[str, Any]:
        """``events, delivered, pending, attempts, successes, failures, duplicates_sent,
        gave_up, statuses, running``."""
        return self.outbox.stats()

    def flush_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until every pending event was delivered (``False`` on timeout or no URL)."""
        return self.outbox.flush(timeout)

    def start_webhooks(self) -> None:
        self.outbox.start()

    def stop_webhooks(self, timeout: float = 5.0) -> None:
        """End the deliverer thread; pending events stay pending (``start_webhooks()`` or the
        next event resumes)."""
        self.outbox.stop(timeout)

    def _emit(self, state: SiteState, kind: str, data: Mapping[str, Any], stamp: int) -> None:
        """Create an event (caller holds the lock): its body is fixed now, byte for byte."""
        event = {
            "id": str(uuid.uuid4()),
            "type": kind,
            "created_at": format_stamp(stamp, state.tz),
            "data": data,
        }
        self.outbox.add(state.site.code, event, dumps(event))

    # ---- internals ----------------------------------------------------------------------------

    def _site(self, code: str) -> SiteState:
        state = self.sites.get(code)
        if state is None:
            raise WalletError(404, "not_found", f"no site {code!r}")
        return state

    def _now(self) -> int:
        return micros(self.clock())

    def _stamp(self, state: SiteState) -> int:
        """The site's clock in microseconds, strictly increasing per site so that a later
        product change always lists after an earlier one."""
        return max(self._now(), state.last_stamp + 1)

    @staticmethod
    def _format(state: SiteState, stamp: int) -> str:
        return format_stamp(stamp, state.tz)

    def _error(self, exc: WalletError) -> Response:
        return self.error_response(exc.status, exc.code, exc.message, details=exc.details)

    async def authenticate(self, request: Request) -> Response | None:
        parts = request.url.path.split("/", 2)
        code = parts[1] if len(parts) > 1 else ""
        state = self.sites.get(code)
        if state is None:
            return self.error_response(404, "not_found", f"no site {code!r}")
        if request.headers.get("x-api-key") != state.site.api_key:
            return self.error_response(401, "unauthorized", "missing or wrong X-Api-Key")
        return None
