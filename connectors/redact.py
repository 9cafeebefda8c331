"""Keep secrets and bearer value out of logs.

Credentials register their values here when they are loaded; a logging filter replaces any
registered value, and the well-known credential headers, in every log record that passes
through vouchflow's and Prefect's loggers.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from pydantic import SecretStr

_secrets: set[str] = set()
_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None

MASK = "***"

_HEADER_PATTERNS = [
    re.compile(r"(?i)(authorization\s*[:=]\s*)(\"?)[^\"\r\n,}]+"),
    re.compile(r"(?i)(x-api-key\s*[:=]\s*)(\"?)[^\"\r\n,}]+"),
    re.compile(r"(?i)(oauth_signature=)(\"?)[^\"&,\s]+"),
    re.compile(r"(?i)(bearer\s+)()[A-Za-z0-9._~+/=-]+"),
]


def register_secret(value: str | SecretStr | None) -> None:
    """Remember a secret value so it is masked wherever it would be logged."""
    global _pattern
    if value is None:
        return
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(text) < 4:
        return
    with _lock:
        if text not in _secrets:
            _secrets.add(text)
            ordered = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for header in _HEADER_PATTERNS:
        text = header.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = ()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            if redact(text) != text:
                record.exc_text = redact(
                    logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
                )
                record.exc_info = None
        return True


_installed = False


def install_log_redaction(*logger_names: str) -> None:
    """Attach the filter to the root logger's handlers and to the named loggers."""
    global _installed
    names = logger_names or ("", "prefect", "httpx", "vouchflow", "uvicorn")
    flt = RedactingFilter()
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(flt)
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)
    _installed = True


def scrub(data: Any, *, keys: frozenset[str] = frozenset(
    {"password", "secret", "token", "api_key", "apikey", "authorization", "pin", "code",
     "consumer_secret", "token_secret"}
)) -> Any:
    """A copy of a payload with secret-looking fields masked (for dead letters and artifacts).
    Codes and PINs keep their last four characters so operators can still tell them apart."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if isinstance(k, str) and k.lower() in keys and isinstance(v, str):
                out[k] = ("*" * max(len(v) - 4, 0) + v[-4:]) if k.lower() in {"code", "pin"} \
                    else MASK
            else:
                out[k] = scrub(v, keys=keys)
        return out
    if isinstance(data, list):
        return [scrub(v, keys=keys) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data
