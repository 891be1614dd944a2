"""Subscriptions: creation, updates, cancellation, status moves and the passing of time.

Each change emits the event Stripe emits: `customer.subscription.created`, `.updated` (with
`previous_attributes`), `.deleted` (the subscription stays retrievable, status `canceled`),
`.paused` / `.resumed`, and `.trial_will_end` (three days before a trial ends, and when it is
ended at once with `trial_end=now`).
"""

from __future__ import annotations

from dataclasses import dataclass

from stripe_emulator import customer_currency, discounts, ids, objects, payment_methods
from stripe_emulator.collection import stop_collection
from stripe_emulator.diff import previous_attributes
from stripe_emulator.errors import StripeError, bad_request, check_currency
from stripe_emulator.forms import apply_metadata
from stripe_emulator.periods import interval_of, period_end
from stripe_emulator.prorations import add_pending, prorations
from stripe_emulator.records import DAY, Subscription, evolve
from stripe_emulator.store import Store
from stripe_emulator.subscription_items import ItemSpec, build_items, merge_items
from stripe_emulator.trials import move_trial_end, trial_warning_due, warn_trial_end

STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
)
ENDED = ("canceled", "incomplete_expired")
INCOMPLETE_EXPIRY = 23 * 3600


def create_subscription(
    store: Store,
    *,
    customer: str,
    items: list[ItemSpec],
    metadata: dict[str, str | None] | None = None,
    status: str = "active",
    trial_days: int | None = None,
    trial_end: int | None = None,
    description: str | None = None,
    collection_method: str = "charge_automatically",
    days_until_due: int | None = None,
    created: int | None = None,
    cancel_at_period_end: bool = False,
    cancel_at: int | None = None,
    default_payment_method: str | None = None,
    missing_payment_method: str | None = None,
    announce: bool = True,
    wanted_discounts: list[tuple[str, str, str]] | None = None,
) -> Subscription:
    """A new subscription, stored; `announce` False: its `customer.subscription.created` is
    left to the caller (emitted once its first invoice has set it up: `invoices.start`).
    `wanted_discounts`: its `discounts` (`discounts.requested`), redeemed now."""
    test_clock = store.live_customer(customer).test_clock
    now = store.customer_now(customer) if created is None else created
    if trial_days:
        trial_end = now + trial_days * DAY
    if trial_end is not None:
        status = "trialing"
    built = build_items(items, now)
    currency = built[0].price.currency
    for item in built:  # a subscription bills in one currency
        check_currency(currency, item.price.currency, "items")
    customer_currency.check(store, customer, currency)
    anchor = trial_end if trial_end is not None else now  # the first paid period's start
    record = Subscription(
        id=ids.new_id("sub"),
        created=now,
        customer=customer,
        items=built,
        status=status,
        current_period_start=now,
        current_period_end=anchor if trial_end is not None else period_end(now, now, built),
        billing_cycle_anchor=anchor,
        currency=currency,
        trial_start=now if trial_end is not None else None,
        trial_end=trial_end,
        metadata=apply_metadata({}, metadata),
        description=description or None,
        collection_method=collection_method,
        days_until_due=days_until_due,
        test_clock=test_clock,
        default_payment_method=default_payment_method,
        missing_payment_method=missing_payment_method or "create_invoice",
    )
    if cancel_at_period_end or cancel_at is not None:
        record = schedule_cancel(record, now, cancel_at, cancel_at_period_end)
    if wanted_discounts:
        record = evolve(record, discounts=discounts.redeem(store, wanted_discounts, record, now))
    store.add_subscription(record)
    customer_currency.adopt(store, customer, currency, now)
    discounts.announce(store, (), record.discounts, now)
    if announce:
        store.emit("customer.subscription.created", record, created=now)
    return record


def save(
    store: Store, old: Subscription, new: Subscription, created: int | None = None
) -> Subscription:
    """Store a changed subscription and emit the events Stripe emits for the change."""
    store.subscriptions.put(new.id, new)
    if new.status == "canceled" and old.status != "canceled":
        store.emit("customer.subscription.deleted", new, created=created)
        return new
    previous = previous_attributes(objects.subscription(old), objects.subscription(new))
    if not previous:
        return new
    store.emit("customer.subscription.updated", new, previous, created=created)
    if new.status == "paused" and old.status != "paused":
        store.emit("customer.subscription.paused", new, created=created)
    elif old.status == "paused" and new.status != "paused":
        store.emit("customer.subscription.resumed", new, created=created)
    return new


def schedule_cancel(
    sub: Subscription, now: int, at: int | None, at_period_end: bool
) -> Subscription:
    if at is None and not at_period_end:
        return evolve(
            sub,
            cancel_at=None,
            cancel_at_period_end=False,
            canceled_at=None,
            cancellation_reason=None,
        )
    return evolve(
        sub,
        cancel_at=sub.current_period_end if at_period_end else at,
        cancel_at_period_end=at_period_end,
        canceled_at=now,
        cancellation_reason="cancellation_requested",
    )


@dataclass
class SubscriptionChanges:
    metadata: dict[str, str | None] | None = None
    cancel_at_period_end: bool | None = None
    cancel_at: int | None = None
    clear_cancel_at: bool = False
    description: str | None = None
    items: list[ItemSpec] | None = None
    trial_end_now: bool = False
    trial_end: int | None = None  # a trial's new end (a Unix time)
    pause_behavior: str | None = None
    resume_collection: bool = False
    comment: str | None = None
    feedback: str | None = None
    default_payment_method: str | None = None  # "" clears it
    proration_behavior: str = "create_prorations"  # prorations.py
    discounts: list[tuple[str, str, str]] | None = None  # discounts.requested: [] clears


def update_subscription(store: Store, sub_id: str, changes: SubscriptionChanges) -> Subscription:
    old = store.subscriptions.get(sub_id)
    now = store.customer_now(old.customer)  # a test clock's time, for its subscriptions
    new = evolve(old, metadata=apply_metadata(old.metadata, changes.metadata))
    if changes.comment is not None or changes.feedback is not None:
        new = evolve(
            new,
            cancellation_comment=changes.comment or new.cancellation_comment,
            cancellation_feedback=changes.feedback or new.cancellation_feedback,
        )
    others = (
        changes.cancel_at_period_end is not None
        or changes.cancel_at is not None
        or changes.clear_cancel_at
        or changes.items is not None
        or changes.description is not None
        or changes.trial_end_now
        or changes.trial_end is not None
        or changes.pause_behavior is not None
        or changes.resume_collection
        or changes.default_payment_method is not None
        or changes.discounts is not None
    )
    if old.status in ENDED and others:
        raise bad_request(
            "A canceled subscription can only update its cancellation_details and metadata."
        )
    new = _apply_cancel_changes(new, changes, now)
    if changes.description is not None:
        new = evolve(new, description=changes.description or None)
    if changes.items is not None:
        new = evolve(new, items=merge_items(old.items, changes.items, now))
        for item in new.items:
            check_currency(old.items[0].price.currency, item.price.currency, "items")
    # A new interval (monthly to yearly) starts a new period now, billed at once, with a
    # credit for the unused part of the old period; else a change mid-period is prorated.
    new_interval = old.status in ("active", "past_due") and interval_of(new.items) != interval_of(
        old.items
    )
    behavior = changes.proration_behavior
    lines = prorations(old, new.items, now, behavior, credit_only=new_interval)
    invoice_now = bool(lines) and behavior == "always_invoice" and not new_interval
    if new_interval:
        new = restart_period(new, now)
    elif invoice_now:
        new = evolve(new, latest_invoice=ids.new_id("in", now))
    if changes.default_payment_method is not None:
        new = evolve(new, default_payment_method=changes.default_payment_method or None)
    if changes.trial_end_now and new.status == "trialing":
        new = end_trial(new, now)
    if changes.trial_end is not None:
        new = move_trial_end(new, changes.trial_end, now)
    if changes.pause_behavior is not None:
        new = evolve(new, pause_behavior=changes.pause_behavior)
    if changes.resume_collection:
        new = evolve(new, pause_behavior=None)
    if changes.discounts is not None:
        new = evolve(new, discounts=discounts.redeem(store, changes.discounts, old, now))
        discounts.announce(store, old.discounts, new.discounts, now)
    saved = save(store, old, new)
    add_pending(store, sub_id, lines)
    if changes.trial_end_now and old.status == "trialing":
        saved = warn_trial_end(store, saved, now)
    if (changes.trial_end_now and old.status == "trialing") or new_interval or invoice_now:
        from stripe_emulator.invoices import bill_now  # invoices imports this module

        bill_now(store, saved, now, items=not invoice_now)
        saved = store.subscriptions.get(sub_id)
    return saved


def end_trial(sub: Subscription, now: int) -> Subscription:
    """The trial ends now: a new period starts, billed at once (`invoices.bill_now`)."""
    return evolve(restart_period(sub, now), status="active", trial_end=now)


def restart_period(sub: Subscription, now: int) -> Subscription:
    """A new period starts now (a trial ended, or the billing interval changed: Stripe resets
    the billing cycle anchor), to be billed at once. A cancellation at the period's end moves
    to the new period's end, as Stripe's `cancel_at` follows the period."""
    end = period_end(now, now, sub.items)
    return evolve(
        sub,
        current_period_start=now,
        current_period_end=end,
        billing_cycle_anchor=now,
        cancel_at=end if sub.cancel_at_period_end else sub.cancel_at,
        latest_invoice=ids.new_id("in", now),
    )


def _apply_cancel_changes(
    sub: Subscription, changes: SubscriptionChanges, now: int
) -> Subscription:
    if changes.cancel_at_period_end and (changes.cancel_at is not None):
        raise bad_request(
            "You cannot set both `cancel_at` and `cancel_at_period_end` to a value.",
            "cancel_at",
        )
    if changes.cancel_at is not None:
        if changes.cancel_at <= now:
            raise bad_request("`cancel_at` must be in the future.", "cancel_at")
        return schedule_cancel(sub, now, changes.cancel_at, False)
    if changes.clear_cancel_at:
        return schedule_cancel(sub, now, None, False)
    if changes.cancel_at_period_end is not None:
        if changes.cancel_at_period_end == sub.cancel_at_period_end:
            return sub
        return schedule_cancel(sub, now, None, changes.cancel_at_period_end)
    return sub


def cancel_subscription(
    store: Store,
    sub_id: str,
    *,
    comment: str | None = None,
    feedback: str | None = None,
    reason: str = "cancellation_requested",
    at: int | None = None,
) -> Subscription:
    old = store.subscriptions.get(sub_id)
    if old.status in ENDED:
        raise StripeError(400, f"The subscription {sub_id} has already been canceled.")
    # Now is the test clock's time for its subscriptions, as for every other change.
    when = store.customer_now(old.customer) if at is None else at
    new = evolve(
        old,
        status="canceled",
        canceled_at=old.canceled_at if at is not None and old.canceled_at else when,
        ended_at=when,
        cancellation_reason=reason,
        cancellation_comment=comment or old.cancellation_comment,
        cancellation_feedback=feedback or old.cancellation_feedback,
    )
    if at is None:
        new = evolve(new, cancel_at_period_end=False, cancel_at=None)
    saved = save(store, old, new, created=at)
    stop_collection(store, sub_id, when)
    return saved


def set_status(store: Store, sub_id: str, status: str) -> Subscription:
    if status not in STATUSES:
        raise bad_request(f"Invalid status: must be one of {', '.join(STATUSES)}", "status")
    old = store.subscriptions.get(sub_id)
    if old.status in ENDED:
        raise bad_request(f"Subscription {sub_id} has ended ({old.status}); it cannot change.")
    if status == "canceled":
        return cancel_subscription(store, sub_id, reason="payment_failed")
    new = evolve(old, status=status)
    if status == "incomplete_expired":
        new = evolve(new, ended_at=store.now())
    return save(store, old, new)


def next_transition(sub: Subscription, now: int) -> int | None:
    """When the passing of time next changes this subscription (None: not before `now`)."""
    if sub.status in ENDED:
        return None
    candidates = []
    if sub.status == "incomplete":
        candidates.append(sub.created + INCOMPLETE_EXPIRY)
    elif sub.status != "paused":
        candidates.append(sub.current_period_end)
    if sub.cancel_at is not None:
        candidates.append(sub.cancel_at)
    warning = trial_warning_due(sub)
    if warning is not None:
        candidates.append(warning)
    due = min(candidates) if candidates else None
    return due if due is not None and due <= now else None


def transition(store: Store, sub: Subscription, at: int) -> None:
    warning = trial_warning_due(sub)
    if warning is not None and warning <= at < sub.current_period_end:
        warn_trial_end(store, sub, at)
    elif sub.status == "incomplete":
        save(store, sub, evolve(sub, status="incomplete_expired", ended_at=at), created=at)
    elif sub.cancel_at is not None and sub.cancel_at <= at:
        reason = sub.cancellation_reason or "cancellation_requested"
        cancel_subscription(store, sub.id, at=at, reason=reason)
    elif (
        sub.status == "trialing"
        and payment_methods.for_invoice(store, sub.customer, sub.id) is None
        and sub.missing_payment_method == "cancel"
    ):
        # `trial_settings.end_behavior.missing_payment_method=cancel`: no card, no subscription.
        cancel_subscription(store, sub.id, at=at, reason="cancellation_requested")
    else:
        # A new billing period starts (a trial ends into `active`); payment always succeeds.
        start = sub.current_period_end
        end = period_end(sub.billing_cycle_anchor, start, sub.items)
        new = evolve(sub, current_period_start=start, current_period_end=end)
        if sub.status == "trialing":
            new = evolve(new, status="active")
        save(store, sub, new, created=at)
