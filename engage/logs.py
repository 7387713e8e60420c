"""Structured logs for the daemon: one line per event, JSON or text, PII masked.

Every engage module logs with ``logging.getLogger(__name__)`` and a stable
``event`` name plus fields in ``extra`` (``campaign``, ``message_id``, ...).
This module only decides how such records look on the way out:

* ``json``: one object per line, ``{"ts", "level", "event", "logger", ...fields}``
  (what log shippers want);
* ``text``: ``2026-06-15T15:00:00.123Z INFO  planned campaign=winback inserted=12``.

Addresses are masked by default (``a***@example.com``, ``+1******0123``):
logs travel to places the customer database never goes. Secret values from
the environment are replaced by ``***`` wherever they appear, masking or not.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from .errors import describe

__all__ = ["JsonFormatter", "TextFormatter", "inherit", "inherited", "mask_pii", "setup_logging"]

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
_PHONE = re.compile(r"\+(\d)(\d{4,10})(\d{4})\b")

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "event",
    "taskName",
}


def mask_pii(text: str) -> str:
    """Mask e-mail addresses and E.164 phone numbers inside ``text``."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: f"+{m.group(1)}{'*' * len(m.group(2))}{m.group(3)}", text)


class _Scrubber:
    """Masks PII (optionally) and secrets (always) in every string of a value."""

    def __init__(self, mask: bool, secrets: Iterable[str]):
        self.mask = mask
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return mask_pii(value) if self.mask else value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {str(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, datetime):
            return _iso(value)
        return self.text(str(value))


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class _Base(logging.Formatter):
    def __init__(self, *, mask: bool = True, secrets: Iterable[str] = (), tracebacks: bool = True):
        super().__init__()
        self.scrub = _Scrubber(mask, secrets)
        self.tracebacks = tracebacks

    def parts(self, record: logging.LogRecord) -> tuple[str, str, str, dict[str, Any]]:
        """(ts, level, event, fields); ``msg`` is a field when it says more than the event."""
        ts = _iso(datetime.fromtimestamp(record.created, UTC))
        message = record.getMessage()
        event = getattr(record, "event", None) or message
        fields = _fields(record)
        if message != event:
            fields["msg"] = message
        if record.exc_info:
            exc = record.exc_info[1]
            fields["error"] = (
                self.formatException(record.exc_info)
                if self.tracebacks or exc is None
                else describe(exc)
            )
        if record.name and not record.name.startswith("engage"):
            fields.setdefault("logger", record.name)
        return ts, record.levelname, self.scrub.text(str(event)), self.scrub.value(fields)


class JsonFormatter(_Base):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        ts, level, event, fields = self.parts(record)
        return json.dumps({"ts": ts, "level": level, "event": event, **fields}, default=str)


class TextFormatter(_Base):
    """``ts LEVEL event key=value ...`` for humans and journald."""

    def format(self, record: logging.LogRecord) -> str:
        ts, level, event, fields = self.parts(record)
        error = fields.pop("error", None)
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        line = f"{ts} {level:<7} {event}" + (f" {pairs}" if pairs else "")
        return line + (f"\n{error}" if error else "")


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value) if (" " in value or not value) else value
    return json.dumps(value, default=str)


def setup_logging(
    fmt: str = "text",
    *,
    level: str | int = "INFO",
    mask: bool = True,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    tracebacks: bool = True,
) -> logging.Handler:
    """Route every log record to ``stream`` (stderr) in ``fmt`` (``json`` or ``text``).

    Replaces handlers on the root logger, so calling it twice is harmless.
    Third-party chatter (APScheduler's per-job lines, Alembic) is kept at
    WARNING, and so is the Twilio SDK's unless ``level`` is DEBUG (see
    ``quiet_libraries``). ``tracebacks=False`` shortens
    an exception attached to a record to one ``Type: message`` line.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler.setFormatter(formatter(mask=mask, secrets=secrets, tracebacks=tracebacks))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_libraries(root.level)
    return handler


QUIET_LIBRARIES = ("apscheduler", "alembic")  # always at WARNING
# The Twilio SDK logs each request and response at INFO (11 lines per SMS,
# with the message body): only with --log-level debug.
DEBUG_ONLY_LIBRARIES = ("twilio.http_client",)


def quiet_libraries(level: int) -> None:
    """Set third-party loggers to WARNING (Twilio's: unless ``level`` is DEBUG)."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in DEBUG_ONLY_LIBRARIES:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level <= logging.DEBUG else logging.WARNING
        )


def inherited() -> tuple[logging.Formatter | None, int]:
    """What a child process needs to log like this one: the formatter
    ``setup_logging`` installed (None if it was not called) and the root level."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler.formatter, _Base):
            return handler.formatter, root.level
    return None, root.level


def inherit(formatter: logging.Formatter | None, level: int) -> None:
    """In a child process: log to stderr as the parent does (see ``inherited``)."""
    root = logging.getLogger()
    root.setLevel(level)
    quiet_libraries(level)
    if formatter is not None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
