"""Compact JSON text exactly as ``json.dumps`` writes it, made by orjson when orjson writes
the same bytes: the state store's canonical text (what fingerprints hash) and the wire bodies
of the connectors both want ``json``'s bytes at orjson's cost."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def json_bytes(data: Any, *, default: Callable[[Any], Any], sort_keys: bool = False,
               fast_default: Callable[[Any], Any] | None = None,
               exact_types: bool = False) -> bytes:
    """``json.dumps(data, default=default, sort_keys=sort_keys, separators=(",", ":"))`` as
    bytes. orjson writes it unless its text could differ, and then ``json`` does: a
    ``TypeError`` from orjson (a type it does not write; times and dataclasses always go to
    the default, as in ``json``), or text outside printable ASCII (``json`` escapes it,
    orjson writes UTF-8). ``fast_default`` is orjson's default when it must refuse more than
    ``default`` (raising ``TypeError`` sends the data to ``json``); ``exact_types`` sends
    subclasses of str, int, dict and list (enums among them) to it too. Floats are not
    covered: their text differs (``1e+16``, ``NaN``)."""
    option = _PASSTHROUGH | (orjson.OPT_SORT_KEYS if sort_keys else 0) | (
        orjson.OPT_PASSTHROUGH_SUBCLASS if exact_types else 0)
    try:
        text = orjson.dumps(data, default=fast_default or default, option=option)
    except TypeError:
        pass
    else:
        if text.isascii() and b"\x7f" not in text:
            return text
    return json.dumps(data, default=default, sort_keys=sort_keys,
                      separators=(",", ":")).encode()
