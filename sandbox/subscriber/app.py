"""A downstream subscriber of vouchflow's events (DESIGN.md section 5, "Downstream
subscribers"), written from the contract alone.

vouchflow POSTs each event to the subscription URL with the body
``{"id", "type", "occurred_at", "sequence", "entity": {"type", "key"}, "data"}`` and the headers
``X-Vouchflow-Signature: t={unix},v1={hex}`` (hex = HMAC-SHA256(secret, ``"{t}.{raw body}"``)),
``X-Vouchflow-Event-Id`` and ``X-Vouchflow-Event-Type``. This receiver:

- refuses (401, nothing recorded) a missing or wrong signature, a body that is not the one
  signed, and a ``t`` outside ``tolerance_s`` (an old request replayed); refuses (400) a body
  without the fields, or headers that name another event; every refusal is kept with its
  reason (``rejections``);
- answers 200 to a good event and counts it per event id (``received``); a repeat (same id)
  is answered 200 too, and counted, but is not a new arrival;
- keeps, per entity, the order of first arrivals by ``sequence``, and lists any event that
  arrived for the first time after a later event of its entity (``out_of_order``);
- can be told to fail, to be slow or to answer 429 for a while (``fail``, ``slow``,
  ``throttle``: the framework's fault switch, which answers before the handler runs, so a
  faulted request has no effect), or to refuse particular events (``refuse``).

The effect log records ``event.received`` (key: the event id) for each accepted request, with
``duplicate``, ``sequence`` and ``entity``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import FaultRule, Sandbox, json_response

SIGNATURE_HEADER = "x-vouchflow-signature"
EVENT_ID_HEADER = "x-vouchflow-event-id"
EVENT_TYPE_HEADER = "x-vouchflow-event-type"
REQUIRED = ("id", "type", "occurred_at", "data")


def _mac(secret: str, body: bytes, t: int) -> str:
    """HMAC-SHA256(secret, ``"{t}.{raw body}"``), hex."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, t: int) -> str:
    """``t={t},v1={hex}`` as a sender computes it (tests use it to forge requests)."""
    return f"t={t},v1={_mac(secret, body, t)}"


class SubscriberSandbox(Sandbox):
    name = "subscriber"

    def __init__(self, secret: str, *, path: str = "/events", tolerance_s: float = 300.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secret = secret
        self.path = path
        self.tolerance_s = tolerance_s
        self._received: Counter[str] = Counter()
        self._first: dict[str, dict[str, Any]] = {}
        self._order: dict[str, list[int]] = {}
        self._top: dict[str, int] = {}
        self._out_of_order: list[dict[str, Any]] = []
        self._bodies: dict[str, str] = {}
        self._mismatched_repeats: list[str] = []
        self._rejections: list[dict[str, Any]] = []
        self._refuse_ids: set[str] = set()
        self._refuse_types: set[str] = set()
        self._refuse_status = 500
        self._refuse_body = "refused"

    # ---- routes -------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self._event, methods=["POST"])]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/subscriber/received", self._admin_received, methods=["GET"]),
            Route("/subscriber/rejections", self._admin_rejections, methods=["GET"]),
            Route("/subscriber/refuse", self._admin_refuse, methods=["POST"]),
        ]

    def _reject(self, status: int, reason: str, event_id: str | None) -> Response:
        with self.lock:
            self._rejections.append({"t": time.time(), "status": status, "reason": reason,
                                     "event_id": event_id})
        return self.error_response(status, "unauthorized" if status == 401 else "invalid",
                                   reason)

    async def _event(self, request: Request) -> Response:
        body = await request.body()
        headers = request.headers
        header_id = headers.get(EVENT_ID_HEADER)
        problem = self._check_signature(headers.get(SIGNATURE_HEADER, ""), body)
        if problem is not None:
            return self._reject(401, problem, header_id)
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._reject(400, "body is not JSON", header_id)
        if not isinstance(event, dict) or any(k not in event for k in REQUIRED):
            return self._reject(400, f"an event needs {', '.join(REQUIRED)}", header_id)
        event_id = str(event["id"])
        if header_id != event_id or headers.get(EVENT_TYPE_HEADER) != event["type"]:
            return self._reject(400, "X-Vouchflow-Event-Id/-Type differ from the body",
                                header_id)
        with self.lock:
            if event_id in self._refuse_ids or event["type"] in self._refuse_types:
                status, text = self._refuse_status, self._refuse_body
            else:
                status, text = 0, ""
        if status:
            return Response(text, status_code=status, media_type="text/plain")
        entity_doc = event.get("entity") or {}
        entity = f"{entity_doc.get('type')}:{entity_doc.get('key')}"
        sequence = event.get("sequence")
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            duplicate = event_id in self._received
            self._received[event_id] += 1
            if duplicate:
                if self._bodies.get(event_id) != digest:
                    self._mismatched_repeats.append(event_id)
            else:
                self._bodies[event_id] = digest
                self._first[event_id] = {"t": time.time(), "type": event["type"],
                                         "entity": entity, "sequence": sequence}
                if isinstance(sequence, int):
                    top = self._top.get(entity)
                    if top is not None and sequence < top:
                        self._out_of_order.append({"id": event_id, "entity": entity,
                                                   "sequence": sequence, "after": top})
                    self._top[entity] = sequence if top is None else max(sequence, top)
                self._order.setdefault(entity, []).append(sequence)
        self.effects.record("event.received", event_id, duplicate=duplicate, entity=entity,
                            sequence=sequence)
        return json_response({"received": event_id, "duplicate": duplicate})

    def _check_signature(self, header: str, body: bytes) -> str | None:
        t: int | None = None
        signatures: list[str] = []
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t" and value.lstrip("-").isdigit():
                t = int(value)
            elif key == "v1":
                signatures.append(value)
        if t is None or not signatures:
            return "missing or malformed signature"
        if abs(time.time() - t) > self.tolerance_s:
            return "signature timestamp outside the allowed window"
        expected = _mac(self.secret, body, t)
        if not any(hmac.compare_digest(expected, s) for s in signatures):
            return "signature does not match the body"
        return None

    # ---- telling it to misbehave ----------------------------------------------------------------

    def fail(self, *, for_s: float | None = None, rate: float = 1.0, status: int = 503,
             count: int | None = None, seed: int | None = None) -> FaultRule:
        """Answer ``status`` (the request has no effect), for a while or the next ``count``."""
        return self.faults.add(error_rate=rate, error_status=status, duration_s=for_s,
                               count=count, seed=seed, path_prefix=self.path)

    def slow(self, ms: float, *, jitter_ms: float = 0.0, for_s: float | None = None
             ) -> FaultRule:
        return self.faults.add(latency_ms=ms, latency_jitter_ms=jitter_ms, duration_s=for_s,
                               path_prefix=self.path)

    def throttle(self, *, rate: float = 1.0, retry_after: float | None = None,
                 for_s: float | None = None, count: int | None = None,
                 seed: int | None = None) -> FaultRule:
        """Answer 429 (with ``Retry-After`` when given) for a while or the next ``count``."""
        return self.faults.add(rate_limit_rate=rate, retry_after=retry_after,
                               duration_s=for_s, count=count, seed=seed, path_prefix=self.path)

    def refuse(self, *, event_ids: set[str] | None = None, types: set[str] | None = None,
               status: int = 500, body: str = "refused") -> None:
        """Refuse these events (after checking their signature) with ``status`` and ``body``
        until told otherwise (``refuse()`` with nothing clears it)."""
        with self.lock:
            self._refuse_ids = set(event_ids or ())
            self._refuse_types = set(types or ())
            self._refuse_status, self._refuse_body = status, body

    # ---- what it saw ----------------------------------------------------------------------------

    def received(self) -> Counter[str]:
        """Accepted requests per event id (repeats included)."""
        with self.lock:
            return Counter(self._received)

    def first_arrivals(self) -> dict[str, dict[str, Any]]:
        """Event id -> ``{t, type, entity, sequence}`` of its first accepted arrival."""
        with self.lock:
            return {k: dict(v) for k, v in self._first.items()}

    def entity_order(self, entity: str) -> list[int]:
        """The sequences of an entity's events in the order they first arrived."""
        with self.lock:
            return list(self._order.get(entity, []))

    def out_of_order(self) -> list[dict[str, Any]]:
        """First arrivals that came after a later event of the same entity."""
        with self.lock:
            return [dict(x) for x in self._out_of_order]

    def mismatched_repeats(self) -> list[str]:
        """Event ids that arrived again with a different body."""
        with self.lock:
            return list(self._mismatched_repeats)

    def rejections(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self._rejections]

    # ---- admin ----------------------------------------------------------------------------------

    async def _admin_received(self, request: Request) -> Response:
        with self.lock:
            data = {"received": dict(self._received),
                    "first": {k: v["t"] for k, v in self._first.items()},
                    "out_of_order": list(self._out_of_order),
                    "mismatched_repeats": list(self._mismatched_repeats),
                    "rejections": len(self._rejections)}
        return json_response(data)

    async def _admin_rejections(self, request: Request) -> Response:
        return json_response({"rejections": self.rejections()})

    async def _admin_refuse(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        self.refuse(event_ids=set(body.get("event_ids", [])), types=set(body.get("types", [])),
                    status=int(body.get("status", 500)), body=str(body.get("body", "refused")))
        return json_response({"ok": True})

    # ---- data -----------------------------------------------------------------------------------

    def reset_data(self) -> None:
        self._received.clear()
        self._first.clear()
        self._order.clear()
        self._top.clear()
        self._out_of_order.clear()
        self._bodies.clear()
        self._mismatched_repeats.clear()
        self._rejections.clear()
        self._refuse_ids, self._refuse_types = set(), set()

    def snapshot(self) -> dict[str, Any]:
        return {"received": dict(self._received), "first": self._first,
                "order": self._order}

    def restore(self, data: dict[str, Any]) -> None:
        self._received.update(data.get("received", {}))
        self._first.update(data.get("first", {}))
        for entity, seqs in data.get("order", {}).items():
            self._order[entity] = list(seqs)
            known = [s for s in seqs if isinstance(s, int)]
            if known:
                self._top[entity] = max(known)
