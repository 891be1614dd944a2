"""Logging: JSON lines when not on a terminal, readable text on one.

Every line carries the id of the work it belongs to (`request_id`): the `X-Request-Id` of an
HTTP request (see `api.app.RequestIdMiddleware`) or the id of one reconciler poll. Secrets
known to the settings are masked in every formatted line, as a last line of defence.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx

from collab_billing.config import Settings
from collab_billing.db.engine import url_passwords

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# What a client may send as X-Request-Id: short and printable, so it cannot forge log lines.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
REDACTED = "[redacted]"


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


# The shape of the ids the service makes (`req_...`, `poll_...`): a client's id of that shape
# could pass its log lines off as a poll's or another request's.
_OUR_REQUEST_ID = re.compile(r"[a-z]+_[0-9a-f]{16}")


def accept_request_id(presented: str | None) -> str:
    """The client's `X-Request-Id` when it is safe to log and not of the shape of the service's
    own ids; a new id otherwise."""
    if not presented or not _VALID_REQUEST_ID.match(presented):
        return new_request_id()
    return new_request_id() if _OUR_REQUEST_ID.fullmatch(presented) else presented


@contextmanager
def request_id_scope(request_id: str) -> Iterator[str]:
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (None outside a request or poll)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class _Redacting(logging.Formatter):
    """Masks known secret values in the formatted line, whatever logged them."""

    def __init__(self, secrets_: Iterable[str] = (), fmt: str | None = None) -> None:
        super().__init__(fmt)
        # Longest first, so that a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets_ if len(s) >= 8}, key=len, reverse=True)

    def redact(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line


class JsonFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        attributes = vars(record)
        if attributes.keys() - _STANDARD_ATTRIBUTES:  # most lines have no `extra=`
            entry.update(
                (key, value)
                for key, value in attributes.items()
                if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
            )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, default=str))


class TextFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id:
            line = f"{line} [{request_id}]"
        return self.redact(line)


def secret_values(settings: Settings) -> list[str]:
    values = [*settings.webhook_secrets(), *settings.notify_secrets()]
    values += url_passwords(settings.database_url)
    secrets = (
        settings.admin_token,
        settings.stripe_api_key,
        settings.stripe_webhook_secret,
        settings.billing_notify_secret,
    )
    values += [secret.get_secret_value() for secret in secrets if secret is not None]
    for url in settings.notify_urls():  # a receiver's credentials, in its URL
        parsed = httpx.URL(url)
        values += [part for part in (parsed.password, parsed.query.decode()) if part]
    return values


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    use_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    handler = logging.StreamHandler(sys.stderr)
    known_secrets = secret_values(settings)
    handler.setFormatter(
        JsonFormatter(known_secrets)
        if use_json
        else TextFormatter(known_secrets, fmt="%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDK logs request URLs and bodies at debug; keep it quiet whatever the root level.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request URL at info, urllib3 at debug: noise, and URLs can carry
    # customer ids.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
