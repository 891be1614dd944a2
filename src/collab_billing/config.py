"""Settings read from the environment (and an optional `.env` file)."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

STRIPE_DEFAULT_API_BASE = "https://api.stripe.com"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    database_url: str = "sqlite:///collab-billing.db"
    admin_token: SecretStr | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = STRIPE_DEFAULT_API_BASE
    stripe_price_id: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    stripe_timeout_seconds: float = Field(default=30.0, gt=0)
    stripe_requests_per_second: float = Field(default=20.0, gt=0)
    billing_checkout_success_url: str = "http://127.0.0.1:8080/billing/success"
    billing_checkout_cancel_url: str = "http://127.0.0.1:8080/billing/cancel"
    billing_portal_return_url: str = "http://127.0.0.1:8080/billing"
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_enabled: bool = True
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// SQLAlchemy URL")
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

    def webhook_secrets(self) -> list[str]:
        """Several comma-separated secrets are accepted, for rotation."""
        if self.stripe_webhook_secret is None:
            return []
        raw = self.stripe_webhook_secret.get_secret_value()
        return [secret.strip() for secret in raw.split(",") if secret.strip()]


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
