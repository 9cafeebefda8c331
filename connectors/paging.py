"""Pagination as small objects that refuse to loop.

A paginator says what to ask for next (``next_params``), learns from each page
(``update_state``) and knows when it is done (``has_next_page``). Each one remembers every
cursor or offset it has seen: a far end that hands back a position already visited would send
a naive client round forever, so that is an error here, not a hang.
"""

from __future__ import annotations

from typing import Any

from connectors.errors import MalformedResponseError, PaginationError


class Paginator:
    system = "paging"

    def __init__(self) -> None:
        self.has_next_page = True
        self.pages = 0

    def next_params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update_state(self, body: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class OffsetPaginator(Paginator):
    """limit/offset paging with ``hasMore`` (NetSuite collections and SuiteQL)."""

    def __init__(self, limit: int, *, start: int = 0, max_limit: int | None = None) -> None:
        super().__init__()
        if max_limit is not None and limit > max_limit:
            raise ValueError(f"limit {limit} is above the maximum {max_limit}")
        self.limit = limit
        self.offset = start
        self._seen: set[int] = set()

    def next_params(self) -> dict[str, Any]:
        if self.offset in self._seen:
            raise PaginationError(f"offset {self.offset} requested twice", system=self.system)
        self._seen.add(self.offset)
        return {"limit": self.limit, "offset": self.offset}

    def update_state(self, body: Any) -> None:
        if not isinstance(body, dict) or "items" not in body or "hasMore" not in body:
            raise MalformedResponseError("page without items/hasMore", system=self.system)
        self.pages += 1
        count = body.get("count", len(body["items"]))
        served_offset = body.get("offset", self.offset)
        if served_offset != self.offset:
            raise PaginationError(
                f"asked for offset {self.offset}, got a page at offset {served_offset}",
                system=self.system,
            )
        self.has_next_page = bool(body["hasMore"])
        if self.has_next_page and not count:
            raise PaginationError("hasMore with an empty page", system=self.system)
        self.offset += count


class CursorPaginator(Paginator):
    """Opaque cursor paging: ``?cursor=`` in, ``next_cursor`` out (wallet sites)."""

    def __init__(self, limit: int, *, cursor_param: str = "cursor",
                 next_field: str = "next_cursor", start: str | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.cursor_param = cursor_param
        self.next_field = next_field
        self.cursor = start
        self._seen: set[str] = set()

    def next_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": self.limit}
        if self.cursor is not None:
            params[self.cursor_param] = self.cursor
        return params

    def update_state(self, body: Any) -> None:
        if not isinstance(body, dict) or "items" not in body:
            raise MalformedResponseError("page without items", system=self.system)
        self.pages += 1
        cursor = body.get(self.next_field)
        if cursor is None or cursor == "":
            self.has_next_page = False
            return
        if not isinstance(cursor, str):
            raise MalformedResponseError(f"{self.next_field} is not a string",
                                         system=self.system)
        if cursor in self._seen or cursor == self.cursor:
            raise PaginationError(f"cursor {cursor[:40]!r} returned twice", system=self.system)
        self._seen.add(cursor)
        self.cursor = cursor


class StartingAfterPaginator(Paginator):
    """Stripe-style cursor paging: ``?starting_after={id of the last item}`` in,
    ``{"data": [...], "has_more": bool}`` out."""

    def __init__(self, limit: int, *, start: str | None = None, max_limit: int = 100) -> None:
        super().__init__()
        if not 1 <= limit <= max_limit:
            raise ValueError(f"limit {limit} is outside 1..{max_limit}")
        self.limit = limit
        self.cursor = start
        self._seen: set[str] = set()

    def next_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": self.limit}
        if self.cursor is not None:
            params["starting_after"] = self.cursor
        return params

    def update_state(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list) \
                or not isinstance(body.get("has_more"), bool):
            raise MalformedResponseError("page without data/has_more", system=self.system)
        self.pages += 1
        data = body["data"]
        self.has_next_page = body["has_more"]
        if not self.has_next_page:
            return
        if not data:
            raise PaginationError("has_more with an empty page", system=self.system)
        last = data[-1].get("id") if isinstance(data[-1], dict) else None
        if not isinstance(last, str) or not last:
            raise MalformedResponseError("the last item of a page has no id",
                                         system=self.system)
        if last in self._seen or last == self.cursor:
            raise PaginationError(f"cursor {last[:40]!r} returned twice", system=self.system)
        self._seen.add(last)
        self.cursor = last
