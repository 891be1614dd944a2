"""Invoices and the billing cycle: what Stripe does at a subscription's start, at each
renewal, when a payment fails and when it is retried.

- `start`: the invoice of a subscription's first period (Checkout completion, or
  `POST /v1/subscriptions`; $0 for a trial): `invoice.created`, `invoice.finalized`, then
  the payment; the subscription is `active` once it is paid, else `incomplete`.
- `renew`: when the clock passes `current_period_end`, the next period starts
  (`customer.subscription.updated`) and its invoice is created as a `draft`
  (`invoice.created`). As Stripe does, the draft is finalized (`invoice.finalized`) and
  charged an hour later (`FINALIZE_DELAY`, `collect`), when the clock passes that point; the
  subscription's status follows the payment then. Invoices billed at once (a subscription's
  first, a trial ended early, a new interval, final usage) are finalized as they are created.
- A payment: the subscription's `default_payment_method`, else the customer's
  `invoice_settings.default_payment_method`. Success: `invoice.paid`,
  `invoice.payment_succeeded`. Failure: `invoice.payment_failed`, `invoice.updated`
  (`attempt_count`, `next_payment_attempt`), and the subscription moves to `past_due`.
- `pause_collection` (`collect`): a renewal's draft of a subscription whose collection is
  paused stays a draft (`keep_as_draft`), or is finalized and at once voided (`void`) or
  marked uncollectible (`mark_uncollectible`), never charged; the subscription stays as it is.
- Retries (`due`, `collect`): each `BillingSettings.retry_days[n]` days after the previous
  attempt; when the last fails, the subscription is canceled (`cancellation_details.reason`
  `payment_failed`) or becomes `unpaid`, per `BillingSettings.after_retries`, and the invoice
  stays open (payable).
- `pay` (`POST /v1/invoices/{id}/pay`, the hosted invoice page): pays an open invoice; an
  `incomplete`, `past_due` or `unpaid` subscription with nothing else open becomes `active`.
Every event carries the object as it is after the change, stamped with the moment it happened.
"""

from __future__ import annotations

from stripe_emulator import discounts, ids, objects, payment_methods
from stripe_emulator.billing_records import Invoice, PaymentMethod
from stripe_emulator.diff import previous_attributes
from stripe_emulator.errors import bad_request
from stripe_emulator.invoice_objects import invoice as render_invoice
from stripe_emulator.periods import period_end
from stripe_emulator.prorations import has_pending, take_pending
from stripe_emulator.records import DAY, Subscription, evolve
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import cancel_subscription, save
from stripe_emulator.usage_lines import item_line, refreshed

OPEN_STATUSES_RECOVERED = ("past_due", "unpaid", "incomplete")
# How long Stripe leaves a renewal's invoice a draft before it finalizes and charges it
# ("about an hour after `invoice.created`", once the webhooks are delivered).
FINALIZE_DELAY = 3600


def base_url(store: Store) -> str:
    """Where hosted invoice pages live: the current API request's base (remembered for the
    invoices the clock makes, which have no request)."""
    if store.request is not None:
        store.invoice_base_url = store.request.base_url
    return store.invoice_base_url


def _number(store: Store, customer_id: str) -> str:
    customer = store.customers.get(customer_id)
    count = len(store.invoice_index.get(customer_id, ()))
    return f"{customer.invoice_prefix}-{count + 1:04d}"


def create_invoice(
    store: Store,
    sub: Subscription,
    reason: str,
    period: tuple[int, int],
    at: int,
    trial: bool = False,
    invoice_id: str | None = None,
    usage_period: tuple[int, int] | None = None,
    looks_back: tuple[int, int] | None = None,
    finalize: bool = True,
    bill_items: bool = True,
) -> Invoice:
    """A subscription's invoice for the period [start, end), created and finalized (`open`),
    or left a draft that finalizes `FINALIZE_DELAY` later (`finalize` False: a renewal's);
    metered items bill their usage over `usage_period`, the period that ended (usage_lines).
    The invoice's own `period_start`/`period_end` are Stripe's: the period during which its
    items were added, `looks_back` (a renewal's: the period that ended), else `at` to `at`
    (Stripe's lines carry the service period). The subscription's pending prorations come
    first (`bill_items` False: they alone)."""
    start, end = looks_back or (at, at)
    invoice_id = invoice_id or ids.new_id("in", at)
    lines = take_pending(store, sub.id) + tuple(
        item_line(store, item, sub.customer, period, usage_period, at, trial)
        for item in (sub.items if bill_items else ())
    )
    draft = Invoice(
        id=invoice_id,
        created=at,
        customer=sub.customer,
        subscription=sub.id,
        currency=sub.currency,
        lines=lines,
        period_start=start,
        period_end=end,
        billing_reason=reason,
        hosted_invoice_url=f"{base_url(store)}/_emulator/pages/invoices/{invoice_id}",
        number=_number(store, sub.customer),
        test_clock=sub.test_clock,
        discounts=discounts.applying(store, sub, at),
    )
    if not finalize:  # Stripe's draft: the payment is due when it finalizes
        due = at + FINALIZE_DELAY
        draft = evolve(draft, automatically_finalizes_at=due, next_payment_attempt=due)
    store.invoices.add(invoice_id, draft)
    for owner in (sub.customer, sub.id):
        store.invoice_index.setdefault(owner, []).append(invoice_id)
    store.emit("invoice.created", draft, created=at)
    return _finalize(store, draft, at) if finalize else draft


def _finalize(store: Store, draft: Invoice, at: int) -> Invoice:
    final = evolve(draft, status="open", finalized_at=at, automatically_finalizes_at=None)
    store.invoices.put(final.id, final)
    store.emit("invoice.finalized", final, created=at)
    return final


def _next_attempt(store: Store, attempts: int, at: int) -> int | None:
    """When the automatic retry after the `attempts`-th failed attempt happens (None: none)."""
    days = store.billing_settings.retry_days
    return at + days[attempts - 1] * DAY if attempts <= len(days) else None


def charge(
    store: Store, invoice: Invoice, card: PaymentMethod | None, at: int, automatic: bool
) -> Invoice:
    """One payment attempt on an open invoice; returns the invoice after it."""
    attempts = invoice.attempt_count + (1 if invoice.amount_due else 0)
    if invoice.amount_due == 0 or (card is not None and not card.fails):
        paid = evolve(
            invoice,
            status="paid",
            amount_paid=invoice.amount_due,
            attempt_count=attempts,
            attempted=True,
            next_payment_attempt=None,
            paid_at=at,
        )
        store.invoices.put(paid.id, paid)
        store.emit("invoice.paid", paid, created=at)
        store.emit("invoice.payment_succeeded", paid, created=at)
        return paid
    failed = evolve(
        invoice,
        attempt_count=attempts,
        attempted=True,
        first_failed_at=invoice.first_failed_at or at,
        next_payment_attempt=(
            _next_attempt(store, attempts, at) if automatic else invoice.next_payment_attempt
        ),
    )
    store.invoices.put(failed.id, failed)
    store.emit("invoice.payment_failed", failed, created=at)
    previous = previous_attributes(render_invoice(invoice), render_invoice(failed))
    store.emit("invoice.updated", failed, previous, created=at)
    return failed


def _open_invoices(store: Store, sub_id: str) -> list[Invoice]:
    invoices = (store.invoices.rows[i] for i in store.invoice_index.get(sub_id, ()))
    return [invoice for invoice in invoices if invoice.status == "open"]


def _after_payment(store: Store, invoice: Invoice, at: int) -> None:
    """Move the invoice's subscription as the payment's outcome decides."""
    if invoice.subscription is None:
        return
    sub = store.subscriptions.rows[invoice.subscription]
    if invoice.status == "paid":
        if sub.status in OPEN_STATUSES_RECOVERED and not _open_invoices(store, sub.id):
            save(store, sub, evolve(sub, status="active"), created=at)
        return
    if sub.status in ("active", "trialing"):
        save(store, sub, evolve(sub, status="past_due"), created=at)
    elif invoice.next_payment_attempt is None and sub.status == "past_due":
        _retries_exhausted(store, sub, at)


def _retries_exhausted(store: Store, sub: Subscription, at: int) -> None:
    if store.billing_settings.after_retries == "unpaid":
        save(store, sub, evolve(sub, status="unpaid"), created=at)
    else:
        cancel_subscription(store, sub.id, reason="payment_failed", at=at)


def start(
    store: Store,
    sub: Subscription,
    card: PaymentMethod | None,
    at: int,
    attempt: bool = True,
    announced: bool = True,
) -> Subscription:
    """A new subscription's first invoice ($0 during a trial), charged once to `card` (not
    retried), or left open unattempted (`attempt` False: `payment_behavior=default_incomplete`).
    Paid, an `incomplete` subscription becomes `active`; unpaid, it stays `incomplete` until
    the invoice is paid (`pay`) or 23 hours pass (`incomplete_expired`, the invoice voided).
    Announced (Checkout's), the change is `customer.subscription.updated`; else (the API's,
    created in one request) it is announced as it ends: `customer.subscription.created`."""
    trial = sub.trial_end is not None and sub.trial_end > at
    period = (at, sub.current_period_end)
    invoice = create_invoice(store, sub, "subscription_create", period, at, trial)
    if attempt or invoice.amount_due == 0:
        invoice = charge(store, invoice, card, at, automatic=False)
    started = evolve(sub, latest_invoice=invoice.id)
    if sub.status == "incomplete" and invoice.status == "paid":
        started = evolve(started, status="active")
    if announced:
        save(store, sub, started, created=at)
    else:
        store.subscriptions.put(started.id, started)
        store.emit("customer.subscription.created", started, created=at)
    discounts.used(store, sub.id, invoice.subtotal > 0, at)
    return store.subscriptions.rows[sub.id]


def void_first_invoice(store: Store, sub: Subscription, at: int) -> None:
    """An `incomplete` subscription expired: its unpaid first invoice is voided."""
    latest = store.invoices.rows.get(sub.latest_invoice or "")
    if latest is not None and latest.status == "open":
        void(store, latest.id, at)


def renews(store: Store, sub: Subscription, at: int) -> bool:
    """Whether the subscription's next transition at `at` is a renewal (not an end, nor a
    warning of a trial's end)."""
    if at < sub.current_period_end:
        return False
    if sub.status in ("incomplete", "incomplete_expired", "canceled", "unpaid", "paused"):
        return False
    if (
        sub.status == "trialing"
        and payment_methods.for_invoice(store, sub.customer, sub.id) is None
        and sub.missing_payment_method == "cancel"
    ):
        return False  # the trial ends without a card: canceled (subscriptions.transition)
    return sub.cancel_at is None or sub.cancel_at > at


def renew(store: Store, sub: Subscription, at: int) -> None:
    """A new period starts at `current_period_end` (a trial ends into `active`) and is billed.
    A trial that ends without a card and `missing_payment_method=pause` is paused instead."""
    if (
        sub.status == "trialing"
        and payment_methods.for_invoice(store, sub.customer, sub.id) is None
        and sub.missing_payment_method == "pause"
    ):
        save(store, sub, evolve(sub, status="paused"), created=at)
        return
    start = sub.current_period_end
    end = period_end(sub.billing_cycle_anchor, start, sub.items)
    invoice_id = ids.new_id("in", at)
    new = evolve(sub, current_period_start=start, current_period_end=end, latest_invoice=invoice_id)
    if sub.status == "trialing":
        new = evolve(new, status="active")
    save(store, sub, new, created=at)
    # Metered items bill the period that ends (a trial's usage is free).
    ended = None if sub.status == "trialing" else (sub.current_period_start, start)
    invoice = create_invoice(
        store,
        new,
        "subscription_cycle",
        (start, end),
        at,
        False,
        invoice_id,
        ended,
        looks_back=(sub.current_period_start, start),
        finalize=False,  # finalized and charged an hour later (`collect`)
    )
    discounts.used(store, sub.id, invoice.subtotal > 0, at)


def bill_now(store: Store, sub: Subscription, at: int, items: bool = True) -> None:
    """Invoiced and charged at once, like a renewal: a period restarted now (a trial ended
    early: `trial_end=now` or a plan changed from a trial; or the billing interval changed),
    with any pending prorations; or (`items` False) the prorations of a change made with
    `proration_behavior=always_invoice` alone."""
    period = (sub.current_period_start, sub.current_period_end)
    invoice_id = sub.latest_invoice  # set as the subscription changed (`update_subscription`)
    invoice = create_invoice(
        store, sub, "subscription_update", period, at, False, invoice_id, bill_items=items
    )
    card = payment_methods.for_invoice(store, sub.customer, sub.id)
    _after_payment(store, charge(store, invoice, card, at, automatic=True), at)
    discounts.used(store, sub.id, invoice.subtotal > 0, at)


def bill_final_usage(store: Store, sub: Subscription, reason: str, at: int) -> None:
    """The last invoice of a subscription canceled at `at` (`sub`: as it was before): its
    metered items' usage from the period's start to `at`, and its pending prorations, charged
    at once. Stripe makes it at a scheduled cancellation (`cancel_at`, `cancel_at_period_end`)
    and for `invoice_now`; nothing without either, and nothing for a trial (its usage is
    free)."""
    metered = tuple(item for item in sub.items if item.price.meter is not None)
    if not (metered or has_pending(store, sub.id)) or sub.status in ("trialing", "incomplete"):
        return
    period = (sub.current_period_start, at)
    final = evolve(sub, items=metered)
    invoice = create_invoice(
        store, final, reason, period, at, usage_period=period, looks_back=period
    )
    card = payment_methods.for_invoice(store, sub.customer, sub.id)
    charge(store, invoice, card, at, automatic=True)


def due(invoice: Invoice, now: int) -> int | None:
    """When the clock next acts on this invoice, if not after `now`: a draft's finalization
    (then its first payment attempt), or the retry of an open invoice's failed payment."""
    if not invoice.auto_advance:
        return None  # automatic collection stopped (`collection.stop_collection`)
    if invoice.status == "draft":
        at = invoice.automatically_finalizes_at
    elif invoice.status == "open":
        at = invoice.next_payment_attempt
    else:
        return None
    return at if at is not None and at <= now else None


def collect(store: Store, invoice: Invoice, at: int) -> None:
    """The clock's turn on an invoice (`due`): a draft is finalized (its metered lines billing
    the usage reported by then), then charged; an open invoice's payment is retried. The
    subscription moves as the payment's outcome decides."""
    if invoice.status == "draft":
        lines = tuple(
            refreshed(store, line, invoice.customer, invoice.created) for line in invoice.lines
        )
        sub = store.subscriptions.rows.get(invoice.subscription or "")
        paused = sub.pause_behavior if sub is not None else None
        if paused == "keep_as_draft":  # Stripe leaves it a draft, `auto_advance` false
            store.invoices.put(
                invoice.id,
                evolve(invoice, automatically_finalizes_at=None, next_payment_attempt=None),
            )
            return
        invoice = _finalize(store, evolve(invoice, lines=lines), at)
        if paused == "void":  # `pause_collection`: finalized, then no payment is collected
            void(store, invoice.id, at)
            return
        if paused == "mark_uncollectible":
            mark_uncollectible(store, invoice.id, at)
            return
    card = payment_methods.for_invoice(store, invoice.customer, invoice.subscription)
    _after_payment(store, charge(store, invoice, card, at, automatic=True), at)


def pay(
    store: Store, invoice_id: str, card_id: str | None = None, out_of_band: bool = False
) -> Invoice:
    """Pay an open invoice, or one marked uncollectible (Stripe takes its payment), now (with
    `card_id`, a test token or the customer's card, else the default); a declined card raises
    Stripe's 402 `card_declined` after recording the attempt."""
    invoice = store.invoices.get(invoice_id)
    if invoice.status not in ("open", "uncollectible"):
        raise bad_request(f"Invoice is already {invoice.status}.")
    at = store.customer_now(invoice.customer)
    if out_of_band:
        paid = evolve(invoice, status="paid", paid_at=at, next_payment_attempt=None)
        store.invoices.put(paid.id, paid)
        store.emit("invoice.paid", paid, created=at)
        _after_payment(store, paid, at)
        return paid
    card: PaymentMethod | None
    if card_id is None:
        card = payment_methods.for_invoice(store, invoice.customer, invoice.subscription)
    elif card_id in payment_methods.TEST_TOKENS:
        card = payment_methods.attach(store, card_id, invoice.customer)
    else:
        card = payment_methods.customers_card(store, card_id, invoice.customer, "payment_method")
    after = charge(store, invoice, card, at, automatic=False)
    _after_payment(store, after, at)
    if after.status != "paid":
        raise payment_methods.card_declined()
    return after


def void(store: Store, invoice_id: str, at: int | None = None) -> Invoice:
    invoice = store.invoices.get(invoice_id)
    if invoice.status not in ("open", "uncollectible"):
        raise bad_request("You can only void an open or uncollectible invoice.")
    at = store.now() if at is None else at
    voided = evolve(invoice, status="void", voided_at=at, next_payment_attempt=None)
    store.invoices.put(voided.id, voided)
    store.emit("invoice.voided", voided, created=at)
    return voided


def mark_uncollectible(store: Store, invoice_id: str, at: int | None = None) -> Invoice:
    """A bad debt: no more automatic attempts; it can still be paid or voided."""
    invoice = store.invoices.get(invoice_id)
    if invoice.status != "open":
        raise bad_request("You can only mark an open invoice as uncollectible.")
    at = store.customer_now(invoice.customer) if at is None else at
    marked = evolve(
        invoice, status="uncollectible", marked_uncollectible_at=at, next_payment_attempt=None
    )
    store.invoices.put(marked.id, marked)
    store.emit("invoice.marked_uncollectible", marked, created=at)
    return marked


def render(invoice: Invoice) -> objects.Json:
    return render_invoice(invoice)
