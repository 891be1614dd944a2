"""`collab-billing dev`: the whole system on one machine, with no outside service."""

from __future__ import annotations

import logging

import typer

from collab_billing.api.app import create_app
from collab_billing.config import Settings, SettingsError, load_settings
from collab_billing.db.engine import make_engine
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.logs import configure_logging

log = logging.getLogger(__name__)

DEV_STRIPE_KEY = "sk_test_collab_billing_dev"


def run_dev(api_port: int, emulator_port: int, admin_token: str) -> None:
    from stripe_emulator.server import start_in_thread

    with start_in_thread(port=emulator_port, api_key=DEV_STRIPE_KEY) as emulator:
        settings = _dev_settings(emulator.url, admin_token, api_port)
        configure_logging(settings)
        price_id = _create_dev_catalog(settings)
        settings = settings.model_copy(update={"stripe_price_id": price_id})
        engine = make_engine(settings.database_url)
        upgrade_to_head(engine)
        _print_banner(settings, api_port, emulator.url, admin_token)
        from collab_billing.cli import run_api

        run_api(create_app(settings, engine), "127.0.0.1", api_port)


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


def _print_banner(settings: Settings, api_port: int, emulator_url: str, admin_token: str) -> None:
    url = f"http://127.0.0.1:{api_port}"
    auth = f'-H "Authorization: {admin_token}"'
    typer.echo(
        f"""
collab-billing dev is running
  API:             {url}   (docs: {url}/docs)
  Stripe emulator: {emulator_url}
  database:        {settings.database_url}
  admin token:     {admin_token}

Try:
  curl -s {auth} -H 'Content-Type: application/json' \\
       -d '{{"github_user_id": 12345, "github_login": "octocat"}}' {url}/users
  curl -s {auth} {url}/billing/prices
  curl -s {auth} -H 'Content-Type: application/json' \\
       -d '{{"github_user_id": 12345, "price": "team-monthly", "quantity": 5}}' \\
       {url}/billing/subscriptions
  curl -s {auth} '{url}/billing/subscriptions?github_user_id=12345'
Press Ctrl-C to stop.
"""
    )
