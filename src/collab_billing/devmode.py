"""`collab-billing dev`: the whole system on one machine, with no outside service."""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime

import typer
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine, delete, insert, select

from collab_billing.api.app import create_app
from collab_billing.config import Settings, SettingsError, load_settings
from collab_billing.db.engine import make_engine, shown_database_url
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.db.models import Base, ReconcilerState
from collab_billing.dev_clock import MADE_BY_DEV
from collab_billing.logs import configure_logging

log = logging.getLogger(__name__)

DEV_STRIPE_KEY = "sk_test_collab_billing_dev"


def run_dev(api_port: int, emulator_port: int, admin_token: str) -> None:
    from stripe_emulator.server import start_in_thread

    with start_in_thread(port=emulator_port, api_key=DEV_STRIPE_KEY) as emulator:
        settings = _dev_settings(emulator.url, admin_token, api_port)
        configure_logging(settings)
        price_id = _create_dev_catalog(settings)
        _create_dev_meter(settings)
        # The dev plans bill the `llm_tokens` meter too, unless BILLING_USAGE_PRICES says else.
        usage = settings.billing_usage_prices or DEV_USAGE_PRICE
        settings = settings.model_copy(
            update={"stripe_price_id": price_id, "billing_usage_prices": usage}
        )
        engine = make_engine(settings.database_url)
        upgrade_to_head(engine)
        _start_afresh(engine, settings)
        _print_banner(settings, api_port, emulator.url, admin_token)
        from collab_billing.cli import run_api

        # Access judges grace by the emulator's clock, so `/_emulator/clock/advance` shows
        # a past-due subscription's grace running out.
        store = emulator.store

        def emulator_now() -> datetime:
            return datetime.fromtimestamp(store.clock.now(), UTC)

        app = create_app(settings, engine, clock=emulator_now)
        _add_return_pages(app)
        run_api(app, "127.0.0.1", api_port)


def _start_afresh(engine: Engine, settings: Settings) -> None:
    """The emulator starts empty each run (it keeps its data in memory): the rows an earlier
    `dev` left would name customers, prices and subscriptions it no longer has, so they are
    removed. A database with rows `dev` did not make is refused: they are someone's data."""
    where = shown_database_url(settings.database_url)
    with engine.begin() as connection:
        made_by_dev = connection.scalar(
            select(ReconcilerState.value).where(ReconcilerState.name == MADE_BY_DEV)
        )
        used = any(
            connection.scalar(select(table).limit(1)) is not None
            for table in Base.metadata.sorted_tables
        )
        if used and made_by_dev is None:
            typer.echo(
                f"error: DATABASE_URL={where} holds data that `dev` "
                "did not make, and `dev` starts its Stripe emulator empty: point DATABASE_URL "
                "at another database",
                err=True,
            )
            raise typer.Exit(2)
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))
        connection.execute(insert(ReconcilerState).values(name=MADE_BY_DEV, value="1"))
    if used:
        typer.echo(
            f"dev: emptied {where}, left by an earlier run (its emulator's data went with it)"
        )


def _add_return_pages(app: FastAPI) -> None:
    """Where Checkout and the portal send the user back (the URLs `_dev_settings` sets): in
    production, pages of your app; in `dev`, plain pages that say so, rather than a 404."""

    def page(text: str) -> HTMLResponse:
        return HTMLResponse(f"<!doctype html><title>collab-billing dev</title><p>{text}</p>")

    def success(session_id: str = "") -> HTMLResponse:
        return page(
            "Back from Stripe Checkout. Your app's page here calls <code>POST "
            "/billing/subscriptions/sync</code> with <code>{&quot;checkout_session_id&quot;: "
            f"&quot;{html.escape(session_id)}&quot;}}</code> to know at once that the user paid."
        )

    def cancel() -> HTMLResponse:
        return page("Checkout canceled: nothing was bought.")

    def portal_return() -> HTMLResponse:
        return page("Back from the Stripe customer portal.")

    for path, endpoint in (
        ("/billing/success", success),
        ("/billing/cancel", cancel),
        ("/billing", portal_return),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)


def _dev_settings(emulator_url: str, admin_token: str, api_port: int) -> Settings:
    base = f"http://127.0.0.1:{api_port}"
    try:
        return load_settings(
            admin_token=admin_token,
            stripe_api_key=DEV_STRIPE_KEY,
            stripe_api_base=emulator_url,
            billing_checkout_success_url=f"{base}/billing/success",
            billing_checkout_cancel_url=f"{base}/billing/cancel",
            billing_portal_return_url=f"{base}/billing",
        )
    except SettingsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


# The dev catalog: lookup key -> (product, amount in cents, interval). Team is sold per seat.
DEV_PLANS = {
    "pro-monthly": ("Collab Pro", 2000, "month"),
    "pro-yearly": ("Collab Pro", 20000, "year"),
    "team-monthly": ("Collab Team", 900, "month"),
}
DEV_USAGE_PRICE = "llm-tokens"  # the lookup key of the `llm_tokens` meter's price


def _create_dev_catalog(settings: Settings) -> str:
    """Products and prices with lookup keys in the emulator; the `pro-monthly` price's id
    (the default STRIPE_PRICE_ID)."""
    from collab_billing.stripe_gateway import StripeGateway

    gateway = StripeGateway(settings)
    products: dict[str, str] = {}
    prices = {}
    for lookup_key, (name, amount, interval) in DEV_PLANS.items():
        if name not in products:
            products[name] = gateway.create_product(name=name)
        prices[lookup_key] = gateway.create_recurring_price(
            product_id=products[name],
            unit_amount=amount,
            currency="usd",
            interval=interval,
            lookup_key=lookup_key,
        )
    return prices["pro-monthly"]


def _create_dev_meter(settings: Settings) -> None:
    """The `llm_tokens` meter and its metered price (0.01 cent a token, monthly)."""
    from collab_billing.stripe_gateway import StripeGateway

    gateway = StripeGateway(settings)
    meter_id = gateway.create_meter(event_name="llm_tokens", display_name="LLM tokens")
    gateway.create_metered_price(
        product_name="LLM tokens", unit_amount_decimal="0.01", currency="usd",
        meter_id=meter_id, lookup_key=DEV_USAGE_PRICE,
    )  # fmt: skip


def _print_banner(settings: Settings, api_port: int, emulator_url: str, admin_token: str) -> None:
    url = f"http://127.0.0.1:{api_port}"
    auth = f'-H "Authorization: {admin_token}"'
    typer.echo(
        f"""
collab-billing dev is running
  API:             {url}   (docs: {url}/docs)
  Stripe emulator: {emulator_url}
  database:        {shown_database_url(settings.database_url)}
  admin token:     {admin_token}

Try:
  curl -s {auth} -H 'Content-Type: application/json' \\
       -d '{{"github_user_id": 12345, "github_login": "octocat"}}' {url}/users
  curl -s {auth} {url}/billing/prices
  curl -s {auth} -H 'Content-Type: application/json' \\
       -d '{{"github_user_id": 12345, "price": "team-monthly", "quantity": 5}}' \\
       {url}/billing/subscriptions
  curl -s {auth} '{url}/billing/subscriptions?github_user_id=12345'
  curl -s {auth} -H 'Content-Type: application/json' -d '{{"github_user_id": 12345, \
       "meter": "llm_tokens", "value": 1200, "idempotency_key": "req-1"}}' {url}/billing/usage
  curl -s {auth} '{url}/billing/usage?github_user_id=12345'
Press Ctrl-C to stop.
"""
    )
