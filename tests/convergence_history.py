"""The model of `test_convergence.py`'s histories: operations on Stripe (through the emulator
and the SDK), their events delivered to the applier in any order and batching, and the check
that the database ends equal to Stripe's objects."""

import random
from datetime import UTC, datetime
from typing import Any

import httpx
import stripe
from sqlalchemy import Engine, select

from collab_billing.billing.sync import sync_subscriptions
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.engine import make_session_factory
from collab_billing.db.models import (
    BillingCoupon,
    BillingCustomer,
    BillingDiscount,
    BillingInvoice,
    BillingPrice,
    BillingSubscription,
    UnmatchedStripeCustomer,
)
from collab_billing.reconcile.apply import Applier
from collab_billing.stripe_gateway import Event, StripeGateway
from tests.conftest import clear_tables
from tests.stripe_helpers import Emulator

USERS = 3
# The GitHub ids of the users the customers made on Stripe name (`made_on_stripe`): they sign
# up during the history, or never.
NAMED = 200


class History:
    def __init__(self, emulator: Emulator, settings: Settings, engine: Engine) -> None:
        self.emulator = emulator
        self.price = emulator.price()
        self.other_price = emulator.price()  # the plan subscriptions change to and back from
        # Changed by the history; not subscribed to. Tiered: its events carry it without its
        # tiers, which the mirror reads with expand[]=tiers.
        self.catalog_price = _tiered_price(emulator)
        self.factory = make_session_factory(engine)
        self.settings = settings
        self.gateway = StripeGateway(settings)
        self.applier = Applier(self.factory, self.gateway)
        self.webhooks = Applier(self.factory, self.gateway, source="webhook", read_features=True)
        self.customers: list[str] = []
        self.deleted: set[str] = set()
        self.subscriptions: list[str] = []
        self.owners: dict[str, int] = {}  # subscription -> its user's index
        self.days_advanced = 0
        self.price_deleted = False
        sdk = emulator.sdk.v1
        self.coupons = [
            sdk.coupons.create(params={"percent_off": 100, "duration": "forever"}).id,
            sdk.coupons.create(params={"percent_off": 25, "duration": "once"}).id,
        ]
        self.coupons_deleted: set[str] = set()
        # k -> the customers naming user NAMED + k, oldest first (a next one once the last is
        # deleted: one live at a time on Stripe, though not always in what events show)
        self.made_on_stripe: dict[int, list[str]] = {}
        self.signed_up: set[int] = set()  # the k of the users NAMED + k who signed up

    def start(self) -> None:
        from collab_billing import billing

        for index in range(USERS):
            with self.factory() as session, session.begin():
                queries.upsert_user(session, 100 + index, f"user{index}", None)
            user = billing.find_user(self.factory, 100 + index)
            self.customers.append(billing.ensure_customer(self.factory, self.gateway, user))

    def run(self, step: tuple[Any, ...], rng: random.Random) -> None:
        sdk = self.emulator.sdk.v1
        kind = step[0]
        try:
            if kind == "subscribe" and self.customers[step[1]] not in self.deleted:
                params: Any = {
                    "customer": self.customers[step[1]],
                    "items": [{"price": self.price}],
                }
                self.subscriptions.append(sdk.subscriptions.create(params=params).id)
                self.owners[self.subscriptions[-1]] = step[1]
            elif kind == "subscribe_trial" and self.customers[step[1]] not in self.deleted:
                params = {
                    "customer": self.customers[step[1]],
                    "items": [{"price": self.price, "quantity": 2}],
                    "trial_period_days": 7,
                }
                if step[2]:
                    end = {"missing_payment_method": "cancel"}
                    params["trial_settings"] = {"end_behavior": end}
                sub_id = sdk.subscriptions.create(params=params).id
                self.subscriptions.append(sub_id)
                self.owners[sub_id] = step[1]
            elif kind == "change_plan" and self.subscriptions:
                sub_id = self.subscriptions[step[1] % len(self.subscriptions)]
                sub = sdk.subscriptions.retrieve(sub_id)
                item = sub["items"].data[0]
                price = self.other_price if step[2] else self.price
                change: Any = {"id": item.id, "price": price, "quantity": step[3]}
                sdk.subscriptions.update(
                    sub.id, params={"items": [change], "proration_behavior": "none"}
                )
            elif kind == "end_trial" and self.subscriptions:
                sub_id = self.subscriptions[step[1] % len(self.subscriptions)]
                sdk.subscriptions.update(sub_id, params={"trial_end": "now"})
            elif kind == "trials_expire" and self.days_advanced < 16:
                # At most twice: events older than Stripe's 30 days are gone from the log.
                self.emulator.control("POST", "clock/advance", {"seconds": 8 * 86_400})
                self.days_advanced += 8
            elif kind == "cancel_at_period_end" and self.subscriptions:
                sub = self.subscriptions[step[1] % len(self.subscriptions)]
                sdk.subscriptions.update(sub, params={"cancel_at_period_end": step[2]})
            elif kind == "set_status" and self.subscriptions:
                sub = self.subscriptions[step[1] % len(self.subscriptions)]
                self.emulator.set_status(sub, step[2])
            elif kind == "cancel_now" and self.subscriptions:
                sdk.subscriptions.cancel(self.subscriptions[step[1] % len(self.subscriptions)])
            elif kind == "delete_customer" and self.customers[step[1]] not in self.deleted:
                sdk.customers.delete(self.customers[step[1]])
                self.deleted.add(self.customers[step[1]])
            elif kind in ("customer_on_stripe", "sign_up", "delete_made_on_stripe"):
                self.customers_made_on_stripe(step)
            elif kind == "deliver_newest_first":  # as webhooks may come: one by one
                for event in reversed(self.every_event()):
                    self.webhooks.apply([Event.from_dict(event)])
            elif kind in ("checkout", "decline", "pay"):
                self.billing_cycle(step)
            elif kind.endswith(("discount_subscription", "discount_customer", "_coupon")):
                self.discounts(step)
            elif kind == "declined_renewal":  # the card declines, then a renewal comes
                self.billing_cycle(("decline", step[1]))
                self.emulator.control("POST", "clock/advance", {"seconds": 31 * 86_400})
            elif kind == "delete_price" and not self.price_deleted:
                self.emulator.control("POST", f"prices/{self.catalog_price}/delete", {})
                self.price_deleted = True
            elif kind == "update_price" and not self.price_deleted:
                sdk.prices.update(self.catalog_price, params=_price_change(step[1], step[2]))
            elif kind == "advance":
                self.emulator.control("POST", "clock/advance", {"seconds": step[1]})
            elif kind == "deliver":
                events = self.every_event()
                self.deliver(rng.sample(events, max(1, int(len(events) * step[1]))), rng)
            elif kind == "sync_racing":
                before, during = (self.of_user(step[1], change) for change in step[2:])
                self.run(before, rng)
                gateway = self.racing("subscriptions.list", during, rng)
                sync_subscriptions(self.factory, gateway, 100 + step[1], None)
            elif kind == "deliver_racing":
                events, busy = self.every_event(), set[str]()
                applier = Applier(self.factory, self.racing(".retrieve", step[2], rng, busy))
                for event in rng.sample(events, max(1, int(len(events) * step[1]))):
                    busy.clear()
                    busy.add(event["id"])
                    applier.apply([Event.from_dict(event)])
        except stripe.InvalidRequestError as error:
            # Stripe refuses some moves (e.g. updating a canceled subscription): so do we.
            assert "canceled" in str(error) or "deleted" in str(error).lower(), error
        except httpx.HTTPStatusError as error:
            assert error.response.status_code == 400, error.response.text

    def of_user(self, user: int, change: tuple[Any, ...]) -> tuple[Any, ...]:
        """`change`, made to one of the user's subscriptions (a new one if they have none)."""
        mine = [i for i, s in enumerate(self.subscriptions) if self.owners[s] == user]
        if not mine:
            return ("subscribe", user)
        if change[0] == "pay":
            return change
        return (change[0], mine[change[1] % len(mine)], *change[2:])

    def racing(
        self,
        operation: str,
        change: tuple[Any, ...],
        rng: random.Random,
        busy: set[str] | None = None,
    ) -> StripeGateway:
        """A gateway that, right after its first successful read whose operation ends with
        `operation` (before the reader writes it), makes `change` on Stripe and delivers
        every event (but those `busy` being applied by the reader) as webhooks do: one by
        one, each in its own transaction."""
        raced: list[bool] = []

        def observe(name: str, outcome: int | str) -> None:
            if name.endswith(operation) and outcome == 200 and not raced:
                raced.append(True)
                self.run(change, rng)
                events = [e for e in self.every_event() if e["id"] not in (busy or ())]
                rng.shuffle(events)
                for event in events:
                    self.webhooks.apply([Event.from_dict(event)])

        return StripeGateway(self.settings, observer=observe)

    def customers_made_on_stripe(self, step: tuple[Any, ...]) -> None:
        """A customer made on Stripe (the Dashboard's), naming a user of its own, renamed and
        at once deleted or not, or deleted later (a next one naming that user once it is
        deleted); or that user signs up, and the poll adopts what names them."""
        sdk, k = self.emulator.sdk.v1, step[1]
        made = self.made_on_stripe.setdefault(k, [])
        if step[0] == "sign_up" and k not in self.signed_up:
            with self.factory() as session, session.begin():
                queries.upsert_user(session, NAMED + k, f"named{k}", None)
            self.signed_up.add(k)
            self.applier.adopt(as_of=0)  # as a poll that has applied nothing yet
        elif step[0] == "customer_on_stripe" and set(made) <= self.deleted:
            metadata = {"github_user_id": str(NAMED + k)}
            customer = sdk.customers.create(params={"metadata": metadata}).id
            made.append(customer)
            sdk.customers.update(customer, {"name": f"named{k}"})
            if step[2]:
                sdk.customers.delete(customer)
                self.deleted.add(customer)
        elif step[0] == "delete_made_on_stripe" and not set(made) <= self.deleted:
            sdk.customers.delete(made[-1])
            self.deleted.add(made[-1])

    def billing_cycle(self, step: tuple[Any, ...]) -> None:
        sdk = self.emulator.sdk.v1
        kind = step[0]
        if kind == "checkout" and self.customers[step[1]] not in self.deleted:
            params: Any = {
                "mode": "subscription",
                "customer": self.customers[step[1]],
                "line_items": [{"price": self.price, "quantity": 1 + step[1]}],
            }
            session = sdk.checkout.sessions.create(params=params)
            done = self.emulator.control("POST", f"checkout/sessions/{session.id}/complete", {})
            self.subscriptions.append(done["subscription"])
            self.owners[done["subscription"]] = step[1]
        elif kind == "decline" and self.subscriptions:
            sub = sdk.subscriptions.retrieve(self.subscriptions[step[1] % len(self.subscriptions)])
            if sub.customer in self.deleted:
                return
            card = sdk.payment_methods.attach(
                "pm_card_chargeCustomerFail", {"customer": str(sub.customer)}
            )
            sdk.subscriptions.update(sub.id, {"default_payment_method": card.id})
        elif kind == "pay":
            open_ = sdk.invoices.list(params={"status": "open", "limit": 100}).data
            live = [i for i in open_ if i.customer not in self.deleted]
            if live:
                chosen = live[step[1] % len(live)]
                sdk.invoices.pay(chosen.id, {"payment_method": "pm_card_visa"})

    def discounts(self, step: tuple[Any, ...]) -> None:
        sdk, kind = self.emulator.sdk.v1, step[0]
        if kind in ("update_coupon", "delete_coupon"):
            coupon = self.coupons[step[1]]
            if coupon in self.coupons_deleted:
                return
            if kind == "delete_coupon":
                sdk.coupons.delete(coupon)
                self.coupons_deleted.add(coupon)
            else:
                sdk.coupons.update(coupon, {"name": f"renamed {self.days_advanced}"})
        elif kind.endswith("discount_subscription") and self.subscriptions:
            sub_id = self.subscriptions[step[1] % len(self.subscriptions)]
            if kind == "undiscount_subscription":
                sdk.subscriptions.update(sub_id, {"discounts": ""})
            elif self.coupons[step[2]] not in self.coupons_deleted:
                wanted: Any = [{"coupon": self.coupons[step[2]]}]
                sdk.subscriptions.update(sub_id, {"discounts": wanted})
        elif kind.endswith("discount_customer") and self.customers[step[1]] not in self.deleted:
            customer = self.customers[step[1]]
            if kind == "undiscount_customer":
                if sdk.customers.retrieve(customer).discount is not None:
                    sdk.customers.delete_discount(customer)
            elif self.coupons[step[2]] not in self.coupons_deleted:
                path = f"customers/{customer}/discount"
                self.emulator.http.post(
                    f"/_emulator/{path}", json={"coupon": self.coupons[step[2]]}
                )

    def every_event(self) -> list[dict[str, Any]]:
        """Every event, even those past the 30 days `/v1/events` shows (days pass here)."""
        events: list[dict[str, Any]] = self.emulator.control("GET", "state?events=true")["events"]
        return events

    def deliver(self, events: list[dict[str, Any]], rng: random.Random) -> None:
        """Random batches: some sorted like a poll, some one by one like webhooks."""
        pool = events + rng.sample(events, len(events) // 3)  # duplicates
        rng.shuffle(pool)
        while pool:
            size = rng.choice([1, 1, 2, 5, 20])
            batch, pool = pool[:size], pool[size:]
            if rng.random() < 0.5:
                batch.sort(key=lambda event: event["created"])
            self.applier.apply([Event.from_dict(event) for event in batch])

    def assert_converged(self) -> None:
        listing = self.emulator.sdk.v1.subscriptions.list(params={"status": "all", "limit": 100})
        expected = {sub.id: sub.to_dict() for sub in listing.data}
        with self.factory() as session:
            rows = {
                r.stripe_subscription_id: r for r in session.scalars(select(BillingSubscription))
            }
        assert set(rows) == set(expected)
        self.checked = len(expected)
        for sub_id, sub in expected.items():
            row = rows[sub_id]
            period_end = max(item["current_period_end"] for item in sub["items"]["data"])
            assert (
                row.stripe_subscription_status,
                row.stripe_cancel_at_period_end,
                _ts(row.stripe_cancel_at),
                _ts(row.stripe_canceled_at),
                _ts(row.stripe_current_period_end),
                row.stripe_price_id,
                row.quantity,
                _ts(row.stripe_trial_end),
                row.stripe_cancellation_reason,
            ) == (
                sub["status"],
                sub["cancel_at_period_end"],
                sub["cancel_at"],
                sub["canceled_at"],
                period_end,
                sub["items"]["data"][0]["price"]["id"],
                sub["items"]["data"][0]["quantity"],
                sub["trial_end"],
                (sub["cancellation_details"] or {}).get("reason"),
            ), sub_id
        self.assert_customers_converged()
        self.assert_prices_converged()
        self.assert_invoices_converged()
        self.assert_discounts_converged()

    def assert_customers_converged(self) -> None:
        """Our live customers are those live on Stripe that we made, or that name a user who
        signed up; those naming no one yet are remembered live; the others are deleted."""
        with self.factory() as session:
            ours = session.scalars(select(BillingCustomer))
            linked = {c.stripe_customer_id: c.stripe_deleted_at is None for c in ours}
            remembered = session.scalars(select(UnmatchedStripeCustomer))
            unmatched = {c.stripe_customer_id: not c.deleted for c in remembered}
        last = {k: made[-1] for k, made in self.made_on_stripe.items() if made}
        named = {k: c for k, c in last.items() if c not in self.deleted}
        mine = [*self.customers, *(c for k, c in named.items() if k in self.signed_up)]
        assert {c for c, live in linked.items() if live} == set(mine) - self.deleted
        assert {c for c, live in unmatched.items() if live} == set(named.values()) - set(mine)

    def assert_discounts_converged(self) -> None:
        """Every discount Stripe shows (on a subscription, or a live customer's own) is a live
        row equal to it, and every other row of a live customer is a tombstone; coupons too."""
        sdk = self.emulator.sdk.v1
        shown: dict[str, Any] = {}
        live = {c for c in self.customers if c not in self.deleted}
        listing = sdk.subscriptions.list(
            params={"status": "all", "limit": 100, "expand": ["data.discounts"]}
        )
        for sub in listing.auto_paging_iter():
            shown.update((d.id, d) for d in sub.discounts if not isinstance(d, str))
        for customer in sdk.customers.list(params={"limit": 100}).auto_paging_iter():
            if customer.discount is not None:
                shown[customer.discount.id] = customer.discount
        with self.factory() as session:
            rows = {
                r.stripe_discount_id: r
                for r, owner in session.execute(
                    select(BillingDiscount, BillingCustomer.stripe_customer_id).join(
                        BillingCustomer
                    )
                )
                if owner in live
            }
            coupons = {r.stripe_coupon_id: r for r in session.scalars(select(BillingCoupon))}
        shown = {i: d for i, d in shown.items() if d.customer in live}  # a deleted's: gone
        assert {i for i, r in rows.items() if not r.deleted} == set(shown), rows
        for discount_id, discount in shown.items():
            row = rows[discount_id]
            assert (
                row.stripe_coupon_id, row.stripe_subscription_id, _ts(row.stripe_start),
                _ts(row.stripe_end),
            ) == (
                discount.source.coupon, discount.subscription, discount.start, discount.end,
            ), discount_id  # fmt: skip
        self.discounts_checked = len(shown)
        listed = {c.id: c for c in sdk.coupons.list(params={"limit": 100}).data}
        assert {i for i, r in coupons.items() if not r.deleted} == set(listed)
        assert {i for i, r in coupons.items() if r.deleted} == self.coupons_deleted
        for coupon_id, coupon in listed.items():
            row = coupons[coupon_id]
            assert (row.percent_off, row.duration) == (coupon.percent_off, coupon.duration)

    def assert_invoices_converged(self) -> None:
        listing = self.emulator.sdk.v1.invoices.list(params={"limit": 100})
        expected = {inv.id: inv.to_dict() for inv in listing.auto_paging_iter()}
        with self.factory() as session:
            rows = {r.stripe_invoice_id: r for r in session.scalars(select(BillingInvoice))}
        assert set(rows) == set(expected)
        self.invoices_checked = len(expected)
        for invoice_id, inv in expected.items():
            row = rows[invoice_id]
            parent = inv["parent"] or {}
            assert (
                row.status, row.amount_due, row.amount_paid, row.amount_remaining,
                row.attempt_count, _ts(row.next_payment_attempt), row.hosted_invoice_url,
                row.stripe_subscription_id, _ts(row.finalized_at), _ts(row.period_end),
            ) == (
                inv["status"], inv["amount_due"], inv["amount_paid"], inv["amount_remaining"],
                inv["attempt_count"], inv["next_payment_attempt"], inv["hosted_invoice_url"],
                (parent.get("subscription_details") or {}).get("subscription"),
                inv["status_transitions"]["finalized_at"], inv["period_end"],
            ), invoice_id  # fmt: skip

    def assert_prices_converged(self) -> None:
        listing = self.emulator.sdk.v1.prices.list(params={"limit": 100, "expand": ["data.tiers"]})
        expected = {price.id: price.to_dict() for price in listing.data}
        with self.factory() as session:
            rows = {r.stripe_price_id: r for r in session.scalars(select(BillingPrice))}
        deleted = {price_id for price_id, row in rows.items() if row.deleted}
        assert deleted == ({self.catalog_price} if self.price_deleted else set())
        for price_id in deleted:
            del rows[price_id]
        assert set(rows) == set(expected)
        for price_id, price in expected.items():
            row = rows[price_id]
            recurring = price["recurring"] or {}
            assert (
                row.active, row.lookup_key, row.stripe_product_id, row.unit_amount, row.currency,
                row.recurring_interval, row.recurring_interval_count, row.deleted,
                row.billing_scheme, row.tiers_mode, row.tiers,
            ) == (
                price["active"], price["lookup_key"], price["product"], price["unit_amount"],
                price["currency"], recurring.get("interval"), recurring.get("interval_count"),
                False, price["billing_scheme"], price["tiers_mode"], _tiers(price),
            ), price_id  # fmt: skip


def _tiered_price(emulator: Emulator) -> str:
    tiers = [
        {"up_to": 5, "unit_amount": 300, "flat_amount": 100},
        {"up_to": "inf", "unit_amount_decimal": "250.5"},
    ]
    params: Any = {
        "currency": "usd", "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": tiers, "recurring": {"interval": "month"}, "product_data": {"name": "Team"},
    }  # fmt: skip
    return str(emulator.sdk.v1.prices.create(params=params).id)


def _tiers(price: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A listed price's tiers as the mirror keeps them (amounts as decimal text)."""

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    if price.get("tiers") is None:
        return None
    return [
        {
            "up_to": tier["up_to"],
            "unit_amount_decimal": text(tier["unit_amount_decimal"]),
            "flat_amount_decimal": text(tier["flat_amount_decimal"]),
        }
        for tier in price["tiers"]
    ]


def _price_change(field: str, flag: bool) -> dict[str, Any]:
    if field == "active":
        return {"active": flag}
    if field == "metadata":
        return {"metadata": {"tier": "pro" if flag else ""}}
    return {field: f"catalog_{field}" if flag else ""}


def _ts(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


def converged_history(
    emulator: Emulator,
    settings: Settings,
    engine: Engine,
    steps: list[tuple[Any, ...]],
    seed: int,
) -> History:
    """Run `steps` on a reset emulator and empty tables, deliver every event (in an order and
    batching drawn from `seed`), and check the database equals Stripe; returns the history."""
    emulator.reset()
    clear_tables(engine)
    history = History(emulator, settings, engine)
    history.start()
    rng = random.Random(seed)
    for step in steps:
        history.run(step, rng)
    history.deliver(history.every_event(), rng)
    history.applier.adopt(as_of=0)  # as the next poll does first
    history.assert_converged()
    return history
