"""Settings read from the environment (and an optional `.env` file)."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import timedelta

import httpx
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

STRIPE_DEFAULT_API_BASE = "https://api.stripe.com"
# Standard Webhooks: a secret SHOULD be 24 to 64 bytes.
MIN_NOTIFY_SECRET_BYTES = 24
_HEADER_TOKEN = re.compile(r"[!-~]+")
# A host as httpx parses it: a name (IDNA decoded), an IPv4 or IPv6 address, nothing it had
# to percent-encode (a space).
# The drivers the service is installed with (psycopg 3 for PostgreSQL).
_DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")
_HOST = re.compile(r"[^\s%]+")


class Settings(BaseSettings):
    # No `inf`: an infinite timeout or interval fails deep inside a thread (a timestamp out of
    # range), after the start; the bounds below keep finite values sane too.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, allow_inf_nan=False
    )

    database_url: str = "sqlite:///collab-billing.db"
    admin_token: SecretStr | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = STRIPE_DEFAULT_API_BASE
    stripe_price_id: str | None = None
    # The lookup keys of the prices `GET /billing/prices` offers, comma-separated; unset: every
    # active recurring price with a lookup key.
    billing_prices: str | None = None
    # Metered prices (lookup keys or price ids, comma-separated) that every Checkout adds beside
    # the plan, each where its currency and interval are the plan's: the usage it bills rides
    # on the plan's subscription. Unset: a Checkout sells the plan alone.
    billing_usage_prices: str | None = None
    # Plans (issue 29): trial length (0: no trials), whether a trial needs a card (false: a
    # card-less trial that is canceled if none is added by its end), promotion codes, tax.
    billing_trial_days: int = Field(default=0, ge=0, le=730)
    billing_trial_requires_payment_method: bool = False
    billing_allow_promotion_codes: bool = False
    billing_automatic_tax: bool = False
    stripe_webhook_secret: SecretStr | None = None
    # How far in the future a webhook event's `created` may be (clocks differ a little; an
    # event from next year is forged or broken and would poison the rows' watermarks).
    webhook_event_max_ahead_seconds: int = Field(default=86_400, ge=0)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    stripe_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    stripe_requests_per_second: float = Field(default=20.0, gt=0, le=1_000_000)
    # The admin API's own Stripe calls (checkout, portal): how many may wait on Stripe at once,
    # how long a request may queue for one of those slots, and how long one attempt may take.
    # Bounded so that a slow Stripe answers those routes with 503/502 instead of holding every
    # worker thread (database-only routes and /healthz stay fast).
    api_stripe_concurrency: int = Field(default=8, ge=1, le=256)
    api_stripe_queue_seconds: float = Field(default=5.0, gt=0, le=600)
    api_stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # `serve` waits this long for an unreachable database at start before giving up.
    database_startup_wait_seconds: float = Field(default=30.0, ge=0, le=86_400)
    billing_checkout_success_url: str = "http://127.0.0.1:8080/billing/success"
    billing_checkout_cancel_url: str = "http://127.0.0.1:8080/billing/cancel"
    billing_portal_return_url: str = "http://127.0.0.1:8080/billing"
    # How long a `past_due` subscription still grants access, counted from the first failed
    # payment of its open invoice (billing/access.py).
    billing_past_due_grace_days: float = Field(default=3, ge=0, le=365)
    # The rate of meter events sent to Stripe (test mode allows 25 requests a second in all).
    billing_usage_requests_per_second: float = Field(default=20.0, gt=0, le=10_000)
    reconcile_interval_seconds: float = Field(default=5.0, gt=0, le=86_400)
    # Freshness (docs/reconciliation.md): the slowest poll (idle, or webhooks healthy); the
    # share of Stripe's read allowance, max(10,000, 500 x transactions) over 30 days, that
    # the service may spend; how many `POST /billing/subscriptions/sync` a user may make a
    # minute.
    reconcile_safety_interval_seconds: float = Field(default=300.0, gt=0, le=86_400)
    reconcile_read_budget_share: float = Field(default=0.8, gt=0, le=1)
    billing_sync_per_minute: int = Field(default=10, ge=1, le=10_000)
    # Where `billing.state.updated` notifications are POSTed (comma-separated URLs), signed per
    # Standard Webhooks with BILLING_NOTIFY_SECRET (`whsec_` + base64). Unset: nobody is told.
    billing_notify_urls: str | None = None
    billing_notify_secret: SecretStr | None = Field(default=None, validate_default=True)
    # A failing delivery is retried with exponential backoff up to this delay, for this long.
    billing_notify_max_backoff_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    billing_notify_retry_window_seconds: float = Field(default=3 * 86400.0, gt=0, le=30 * 86_400)
    # How often the sender looks for new notifications (it is also woken by its own deliveries).
    billing_notify_poll_seconds: float = Field(default=0.1, gt=0, le=3600)
    reconcile_enabled: bool = True
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        # Checked here, not at the first connection: a URL that does not parse, or names a
        # driver not installed, failed there with a stack trace. (The messages never repeat
        # the URL: it may hold a password.)
        try:
            url = make_url(value)
            url.port  # noqa: B018  (parsed when read: `host:notaport` fails here)
        except (ArgumentError, ValueError):
            raise ValueError("is not a SQLAlchemy URL (e.g. sqlite:///collab-billing.db)") from None
        if url.drivername not in _DATABASE_DRIVERS:
            raise ValueError(
                "must be a sqlite:// or postgresql:// (or postgresql+psycopg://) SQLAlchemy URL"
            )
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError(
                "an in-memory SQLite database is not shared by the service's connections: "
                "give a file, e.g. sqlite:///collab-billing.db"
            )
        return value

    @field_validator("admin_token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Sent in an HTTP header and compared exactly: whitespace would be stripped on the way
        # (and an empty token would match an empty header), non-ASCII cannot be sent reliably.
        if value is not None and not _HEADER_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError(
                "must be printable ASCII without spaces (not empty, not only whitespace)"
            )
        return value

    @field_validator(
        "stripe_api_base",
        "billing_checkout_success_url",
        "billing_checkout_cancel_url",
        "billing_portal_return_url",
    )
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("billing_notify_urls")
    @classmethod
    def _notify_urls(cls, value: str | None) -> str | None:
        for url in _comma_list(value):
            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL:  # its message may quote the password (as a bad port)
                raise ValueError(
                    "each URL must be a valid URL (a password with / # ? @ : must be "
                    "percent-encoded)"
                ) from None
            shown = shown_url(url)[:60]
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"each URL must be http:// or https:// with a host, not {shown!r}")
            # httpx takes both, and every delivery would then fail for days.
            port = 1 if parsed.port is None else parsed.port
            if not 0 < port < 65536 or not _HOST.fullmatch(parsed.host):
                raise ValueError(f"each URL must have a valid host and port, not {shown!r}")
        return value

    @field_validator("billing_notify_secret")
    @classmethod
    def _notify_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            if _comma_list(info.data.get("billing_notify_urls")):
                raise ValueError("must be set when BILLING_NOTIFY_URLS is (whsec_ + base64)")
            return None
        secrets = _comma_list(value.get_secret_value())
        if not secrets:
            raise ValueError("must name at least one secret (whsec_ + base64)")
        for secret in secrets:
            _check_notify_secret(secret)
        return value

    def notify_urls(self) -> list[str]:
        return _comma_list(self.billing_notify_urls)

    def billing_price_lookup_keys(self) -> list[str] | None:
        """`BILLING_PRICES` as a list; None when unset or empty (an empty variable is unset)."""
        return _comma_list(self.billing_prices) or None

    def billing_usage_price_keys(self) -> list[str]:
        """`BILLING_USAGE_PRICES` as a list (empty when unset)."""
        return _comma_list(self.billing_usage_prices)

    def past_due_grace(self) -> timedelta:
        return timedelta(days=self.billing_past_due_grace_days)

    def notify_secrets(self) -> list[str]:
        """Every notification is signed with each (comma-separated), for rotation."""
        if self.billing_notify_secret is None:
            return []
        return _comma_list(self.billing_notify_secret.get_secret_value())

    def webhook_secrets(self) -> list[str]:
        """Several comma-separated secrets are accepted, for rotation."""
        if self.stripe_webhook_secret is None:
            return []
        return _comma_list(self.stripe_webhook_secret.get_secret_value())


def shown_url(url: str) -> str:
    """A URL as logs and error messages show it: without its user info, query and fragment,
    which may carry credentials (a receiver's token)."""
    try:
        bare = httpx.URL(url).copy_with(username=None, password=None, query=None, fragment=None)
        return str(bare)
    except httpx.InvalidURL:
        return "(an invalid URL)"


def _comma_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _check_notify_secret(secret: str) -> None:
    if not secret.startswith("whsec_"):
        raise ValueError("each secret must start with whsec_ (a Standard Webhooks secret)")
    # Strictly: the `standardwebhooks` library decodes leniently, and a receiver written in
    # another language with a strict decoder would reject every notification.
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("each secret must be whsec_ followed by base64 bytes") from None
    if len(key) < MIN_NOTIFY_SECRET_BYTES:
        raise ValueError(
            f"each secret must hold at least {MIN_NOTIFY_SECRET_BYTES} bytes (Standard "
            f"Webhooks), not {len(key)}"
        )


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def describe_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    variable = str(first["loc"][0]).upper() if first["loc"] else "settings"
    return f"invalid setting {variable}: {first['msg']}"


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
