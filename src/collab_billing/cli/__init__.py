"""The `collab-billing` command line: its commands, one module per group."""

from __future__ import annotations

import typer

from collab_billing.cli import outboxes, reconciling, schema, servers
from collab_billing.cli.reconciling import print_status
from collab_billing.cli.servers import run_api

__all__ = ["app", "print_status", "run_api"]

app = typer.Typer(
    help="collab-billing: sell a subscription through Stripe and keep the database in step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(schema.migrate)
users_app = typer.Typer(help="Manage the users that can subscribe.", no_args_is_help=True)
users_app.command("add")(schema.users_add)
users_app.command("list")(schema.users_list)
app.add_typer(users_app, name="users")
app.command()(servers.serve)
app.command()(servers.dev)
app.command("stripe-emulator")(servers.stripe_emulator)
app.command()(reconciling.reconcile)
app.command()(reconciling.resync)
app.command()(outboxes.usage)
notifications_app = typer.Typer(
    help="The billing.state.updated notifications (the outbox).", no_args_is_help=True
)
notifications_app.command("list")(outboxes.notifications_list)
notifications_app.command("replay")(outboxes.notifications_replay)
app.add_typer(notifications_app, name="notifications")
