"""`/v1/subscriptions`."""

from __future__ import annotations

from typing import Any

from stripe_emulator import discounts, invoices, objects, payment_methods
from stripe_emulator.api import Call, created_range, list_args, list_table, route
from stripe_emulator.discount_objects import deleted_discount_json
from stripe_emulator.errors import StripeError, bad_request, missing
from stripe_emulator.forms import Params
from stripe_emulator.immediate_cancel import cancel_now
from stripe_emulator.objects import Json
from stripe_emulator.payment_methods import customers_card
from stripe_emulator.records import Subscription
from stripe_emulator.resumption import ANCHORS
from stripe_emulator.resumption import resume as resume_subscription
from stripe_emulator.store import Store
from stripe_emulator.subscription_items import ItemSpec, build_items
from stripe_emulator.subscriptions import (
    STATUSES,
    SubscriptionChanges,
    create_subscription,
    update_subscription,
)
from stripe_emulator.usage_lines import item_line

PRORATION_BEHAVIORS = ("always_invoice", "create_prorations", "none")
_SUB_IGNORED = (
    "add_invoice_items", "application_fee_percent", "automatic_tax", "backdate_start_date",
    "billing_cycle_anchor", "billing_cycle_anchor_config", "billing_mode", "billing_thresholds",
    "currency", "default_source", "default_tax_rates",
    "invoice_settings", "off_session", "on_behalf_of", "payment_settings",
    "pending_invoice_item_interval", "proration_behavior", "proration_date", "transfer_data",
    "trial_from_plan",
)  # fmt: skip


def item_specs(
    store: Store, p: Params, key: str, required: bool, updating: bool = False
) -> list[ItemSpec] | None:
    """`items[]` / `line_items[]`. When `updating`, an entry may name an existing item by
    `id` and change only its price or quantity."""
    entries = p.dicts(key, required=required)
    if entries is None:
        return None
    if not entries:
        raise missing(key)
    specs = []
    for entry in entries:
        item_id = entry.string("id") if updating else None
        price_id = entry.string("price", required=not item_id)
        price = store.prices.get(price_id, entry.name("price")) if price_id else None
        if price is not None and price.interval is None:
            raise bad_request(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                entry.name("price"),
            )
        if price is not None and not price.active:
            raise bad_request(
                "The price specified is inactive. This field only accepts active prices.",
                entry.name("price"),
            )
        product = store.products.rows.get(price.product) if price is not None else None
        if price is not None and product is not None and not product.active:
            # Stripe refuses it though the price shows `active` (stripe-node#2131); the wording
            # of its message is this emulator's.
            raise bad_request(
                f"The price specified belongs to the inactive product {price.product}. This "
                "field only accepts prices of active products.",
                entry.name("price"),
            )
        quantity = entry.integer("quantity", minimum=1)
        if quantity is not None and price is not None and price.meter is not None:
            raise metered_quantity(key, entry.name("quantity"))
        metadata = entry.metadata()
        deleted = bool(entry.boolean("deleted")) if updating else False
        if deleted and not item_id:
            raise bad_request("An item to delete needs its `id`.", entry.name("deleted"))
        entry.ignore(
            "id",
            "discounts",
            "tax_rates",
            "billing_thresholds",
            "deleted",
            "clear_usage",
            "plan",
            "price_data",
            "adjustable_quantity",
        )
        clean = {k: v for k, v in (metadata or {}).items() if v is not None}
        default_quantity = None if updating and item_id else 1
        specs.append(ItemSpec(price, quantity or default_quantity, clean, item_id, deleted))
    return specs


def metered_quantity(key: str, param: str) -> StripeError:
    """Stripe refuses a quantity on a metered price (its usage is the quantity), with the
    message its Checkout and its Subscriptions API each answer."""
    if key == "line_items":
        entry = param.removesuffix("[quantity]")
        return bad_request(
            "Quantity should not be specified where usage_type is `metered`. "
            f"Remove quantity from `{entry}`.",
            param,
        )
    return bad_request("You cannot set the quantity for metered plans.", param)


def missing_payment_method(p: Params) -> str | None:
    """`trial_settings[end_behavior][missing_payment_method]`, if given."""
    settings = p.hash("trial_settings")
    if settings is None:
        return None
    end = settings.hash("end_behavior", required=True)
    assert end is not None
    choices = ("cancel", "create_invoice", "pause")
    return end.string("missing_payment_method", required=True, choices=choices)


def _cancellation(p: Params) -> tuple[str | None, str | None]:
    details = p.hash("cancellation_details")
    if details is None:
        return None, None
    feedback_choices = (
        "customer_service",
        "low_quality",
        "missing_features",
        "other",
        "switched_service",
        "too_complex",
        "too_expensive",
        "unused",
    )
    return details.string("comment"), details.string("feedback", choices=feedback_choices)


def _cancel_at(p: Params, sub: Subscription | None) -> tuple[int | None, bool]:
    """`cancel_at`: a timestamp, "" (clear), or min/max_period_end (the period's end)."""
    raw = p.raw("cancel_at")
    if raw is None:
        return None, False
    if raw == "":
        return None, True
    if raw in ("min_period_end", "max_period_end"):
        return (sub.current_period_end if sub is not None else None), False
    return p.integer("cancel_at"), False


def _default_payment_method(store: Store, p: Params, customer: str) -> str | None:
    """`default_payment_method`: one of the customer's attached cards, or "" to clear."""
    chosen = p.string("default_payment_method")
    if chosen:
        customers_card(store, chosen, customer, "default_payment_method")
    return chosen


@route("POST", "/v1/subscriptions")
def create(call: Call) -> Json:
    """The subscription and its first invoice, paid with the subscription's or the customer's
    default card (`invoices.start`). `allow_incomplete` (the default): unpaid, it is created
    `incomplete`; `error_if_incomplete`: unpaid, nothing is created and the payment's error is
    answered; `default_incomplete`: created `incomplete` with its invoice left to be paid."""
    p = call.params
    customer = p.string("customer", required=True) or ""
    call.store.live_customer(customer)
    items = item_specs(call.store, p, "items", required=True)
    assert items is not None
    behavior = p.string(
        "payment_behavior",
        choices=(
            "allow_incomplete",
            "default_incomplete",
            "error_if_incomplete",
            "pending_if_incomplete",
        ),
    )
    if behavior == "pending_if_incomplete":
        raise bad_request(
            "pending_if_incomplete is only used with updates and cannot be passed when "
            "creating a Subscription.",
            "payment_behavior",
        )
    trial_end_raw = p.raw("trial_end")
    trial_end = None
    if trial_end_raw is not None and trial_end_raw != "now":
        trial_end = p.integer("trial_end")
    cancel_at, _ = _cancel_at(p, None)
    p.ignore(*_SUB_IGNORED)
    fields: dict[str, Any] = dict(
        customer=customer,
        items=items,
        metadata=p.metadata(),
        status="incomplete",
        trial_days=p.integer("trial_period_days", minimum=0),
        trial_end=trial_end,
        description=p.string("description"),
        collection_method=p.string(
            "collection_method", choices=("charge_automatically", "send_invoice")
        )
        or "charge_automatically",
        days_until_due=p.integer("days_until_due", minimum=0),
        cancel_at_period_end=bool(p.boolean("cancel_at_period_end")),
        cancel_at=cancel_at,
        default_payment_method=_default_payment_method(call.store, p, customer) or None,
        missing_payment_method=missing_payment_method(p),
        wanted_discounts=discounts.requested(p),
    )
    p.finish()
    if fields["collection_method"] == "send_invoice":
        # Invoices sent for payment are not emulated: such a subscription starts `active`.
        fields["status"] = "active"
        return objects.subscription(create_subscription(call.store, **fields))
    card = payment_methods.for_customer(call.store, customer, fields["default_payment_method"])
    pays = card is not None and not card.fails
    if behavior == "error_if_incomplete" and not (pays or _free_start(call.store, fields)):
        raise payment_methods.card_declined() if card else payment_methods.no_card()
    sub = create_subscription(call.store, **fields, announce=False)
    attempt = behavior != "default_incomplete"
    started = invoices.start(call.store, sub, card, sub.created, attempt, announced=False)
    return objects.subscription(started)


def _free_start(store: Store, fields: dict[str, Any]) -> bool:
    """Whether a new subscription's first invoice is $0 (a trial, free or metered items)."""
    if fields["trial_days"] or fields["trial_end"] is not None:
        return True
    items = build_items(fields["items"], 0)
    return all(item_line(store, i, fields["customer"], (0, 0), None, 0, False).amount == 0
               for i in items)  # fmt: skip


@route("GET", "/v1/subscriptions/{id}")
def retrieve(call: Call) -> Json:
    call.params.finish()
    return objects.subscription(call.store.subscriptions.get(call.id))


@route("POST", "/v1/subscriptions/{id}")
def update(call: Call) -> Json:
    p = call.params
    sub = call.store.subscriptions.get(call.id)
    cancel_at, clear = _cancel_at(p, sub)
    comment, feedback = _cancellation(p)
    pause_raw = p.raw("pause_collection")
    pause = p.hash("pause_collection") if isinstance(pause_raw, dict) else None
    pause_behavior = None
    if pause is not None:
        behaviors = ("keep_as_draft", "mark_uncollectible", "void")
        pause_behavior = pause.string("behavior", required=True, choices=behaviors)
        pause.ignore("resumes_at")
    changes = SubscriptionChanges(
        metadata=p.metadata(),
        cancel_at_period_end=p.boolean("cancel_at_period_end"),
        cancel_at=cancel_at,
        clear_cancel_at=clear,
        description=p.string("description"),
        items=item_specs(call.store, p, "items", required=False, updating=True),
        trial_end_now=p.raw("trial_end") == "now",
        trial_end=None if p.raw("trial_end") in (None, "now") else p.integer("trial_end"),
        pause_behavior=pause_behavior,
        resume_collection=pause_raw == "",
        comment=comment,
        feedback=feedback,
        default_payment_method=_default_payment_method(call.store, p, sub.customer),
        discounts=discounts.requested(p),
    )
    behavior = p.string("proration_behavior", choices=PRORATION_BEHAVIORS)
    changes.proration_behavior = behavior or "create_prorations"
    p.ignore(*_SUB_IGNORED, "payment_behavior", "collection_method", "days_until_due")
    p.ignore("trial_settings")
    p.finish()
    return objects.subscription(update_subscription(call.store, call.id, changes))


@route("DELETE", "/v1/subscriptions/{id}")
def cancel(call: Call) -> Json:
    p = call.params
    comment, feedback = _cancellation(p)
    invoice_now = bool(p.boolean("invoice_now"))
    prorate = bool(p.boolean("prorate"))
    p.finish()
    record = cancel_now(
        call.store,
        call.id,
        invoice_now=invoice_now,
        prorate=prorate,
        comment=comment,
        feedback=feedback,
    )
    return objects.subscription(record)


@route("DELETE", "/v1/subscriptions/{id}/discount")
def delete_discount(call: Call) -> Json:
    """Stripe's "Delete a subscription discount": the removal `discounts=""` makes
    (`customer.discount.deleted`, then `customer.subscription.updated` without it), answered
    with the discount removed (`deleted_discount`)."""
    call.params.finish()
    removed = discounts.sole(call.store.subscriptions.get(call.id))
    update_subscription(call.store, call.id, SubscriptionChanges(discounts=[]))
    return deleted_discount_json(removed)


@route("POST", "/v1/subscriptions/{id}/resume")
def resume(call: Call) -> Json:
    p = call.params
    anchor = p.string("billing_cycle_anchor", choices=ANCHORS) or "now"
    behavior = p.string("proration_behavior", choices=PRORATION_BEHAVIORS) or "create_prorations"
    p.ignore("proration_date")
    p.finish()
    sub = call.store.subscriptions.get(call.id)
    if sub.status != "paused":
        raise bad_request("Only paused subscriptions can be resumed.")
    return objects.subscription(resume_subscription(call.store, sub, anchor, behavior))


_LIST_STATUSES = (*STATUSES, "all", "ended")


@route("GET", "/v1/subscriptions")
def list_subscriptions(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    customer = p.string("customer")
    price = p.string("price")
    status = p.string("status", choices=_LIST_STATUSES)
    collection = p.string("collection_method")
    created = created_range(p)
    p.ignore("current_period_end", "current_period_start", "test_clock", "automatic_tax", "plan")
    p.finish()

    def keep(sub: Subscription) -> bool:
        if status is None and sub.status == "canceled":
            return False
        if status == "ended" and sub.status not in ("canceled", "incomplete_expired"):
            return False
        if status not in (None, "all", "ended") and sub.status != status:
            return False
        if price is not None and all(item.price.id != price for item in sub.items):
            return False
        if collection is not None and sub.collection_method != collection:
            return False
        gte, lt = created
        return (gte is None or sub.created >= gte) and (lt is None or sub.created < lt)

    positions = None
    if customer is not None:
        positions = call.store.subscriptions_by_customer.get(customer, [])
    table = call.store.subscriptions
    return list_table(table, args, "/v1/subscriptions", objects.subscription, keep, positions)
