"""The emulator's in-memory state and the primitives every mutation uses.

Threading: the store is shared by the uvicorn event loop (API and control routes) and by test
threads or the webhook worker (via `app.state.emulator`). Every read or write of state must hold
`store.lock` (re-entrant, so helpers can nest). Handlers are short and synchronous, so holding
it on the event loop is fine; bulk generation runs in a worker thread while holding it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stripe_emulator import encode, ids, objects
from stripe_emulator.billing_records import (
    BillingSettings,
    Invoice,
    InvoiceLine,
    PaymentMethod,
    TestClock,
)
from stripe_emulator.clock import Clock
from stripe_emulator.entitlements import Entitlements
from stripe_emulator.errors import not_found
from stripe_emulator.events import RETENTION_SECONDS, Event, EventLog
from stripe_emulator.objects import Json
from stripe_emulator.pagination import OrderedIds
from stripe_emulator.records import (
    CheckoutSession,
    Coupon,
    Customer,
    Discount,
    PortalSession,
    Price,
    Product,
    PromotionCode,
    Subscription,
)

if TYPE_CHECKING:
    from stripe_emulator.meters import MeterState

T = TypeVar("T")


def _meter_state() -> MeterState:
    from stripe_emulator.meters import MeterState  # meters.py builds on this module

    return MeterState()


class Table(Generic[T]):
    """Objects of one kind by id, plus their creation order for pagination."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rows: dict[str, T] = {}
        self.order = OrderedIds()
        # Deleted objects that Stripe no longer shows (404, left out of lists); their records
        # stay for the events that carry them.
        self.gone: set[str] = set()

    def add(self, object_id: str, record: T) -> None:
        self.rows[object_id] = record
        self.order.append(object_id)

    def put(self, object_id: str, record: T) -> None:
        self.rows[object_id] = record

    def get(self, object_id: str, param: str = "id") -> T:
        record = self.rows.get(object_id)
        if record is None or object_id in self.gone:
            raise not_found(self.kind, object_id, param)
        return record

    def __len__(self) -> int:
        return len(self.rows)


class RequestInfo:
    """The API request being handled; Stripe records it on the events it causes.

    `base_url` (for the URLs of Checkout and portal sessions) may be given as a function,
    called the first time it is read: most requests never need it."""

    def __init__(
        self, request_id: str, idempotency_key: str | None, base_url: str | Callable[[], str]
    ) -> None:
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self._base_url = base_url

    @property
    def base_url(self) -> str:
        if not isinstance(self._base_url, str):
            self._base_url = self._base_url()
        return self._base_url


@dataclass
class IdempotentResult:
    fingerprint: str
    status: int
    body: bytes
    created: float


@dataclass
class Store:
    clock: Clock = field(default_factory=Clock)
    lock: threading.RLock = field(default_factory=threading.RLock)
    customers: Table[Customer] = field(default_factory=lambda: Table("customer"))
    products: Table[Product] = field(default_factory=lambda: Table("product"))
    prices: Table[Price] = field(default_factory=lambda: Table("price"))
    subscriptions: Table[Subscription] = field(default_factory=lambda: Table("subscription"))
    checkout_sessions: Table[CheckoutSession] = field(
        default_factory=lambda: Table("checkout.session")
    )
    portal_sessions: Table[PortalSession] = field(
        default_factory=lambda: Table("billing_portal.session")
    )
    invoices: Table[Invoice] = field(default_factory=lambda: Table("invoice"))
    payment_methods: Table[PaymentMethod] = field(default_factory=lambda: Table("payment_method"))
    test_clocks: Table[TestClock] = field(default_factory=lambda: Table("test_helpers.test_clock"))
    billing_settings: BillingSettings = field(default_factory=BillingSettings)
    # customer id and subscription id -> their invoices' ids, oldest first.
    invoice_index: dict[str, list[str]] = field(default_factory=dict)
    # subscription id -> its proration invoice items not invoiced yet (prorations.py).
    pending_prorations: dict[str, list[InvoiceLine]] = field(default_factory=dict)
    # The base of hosted invoice URLs: the last API request's (invoices made as the clock
    # passes have no request of their own).
    invoice_base_url: str = "http://127.0.0.1:12111"
    coupons: Table[Coupon] = field(default_factory=lambda: Table("coupon"))
    promotion_codes: Table[PromotionCode] = field(default_factory=lambda: Table("promotion_code"))
    # Every discount ever applied, by id (`expand[]=discounts`: Stripe fetches none by id).
    discounts: dict[str, Discount] = field(default_factory=dict)
    # customer id -> positions (in subscriptions.order) of its subscriptions, ascending.
    subscriptions_by_customer: dict[str, list[int]] = field(default_factory=dict)
    events: EventLog = field(default_factory=EventLog)
    meters: MeterState = field(default_factory=_meter_state)
    entitlements: Entitlements = field(default_factory=Entitlements)
    idempotency: dict[tuple[str, str], IdempotentResult] = field(default_factory=dict)
    portal_configuration: str = field(default_factory=lambda: ids.new_id("bpc"))
    request: RequestInfo | None = None
    # Webhook delivery bookkeeping: event id -> deliveries not yet succeeded.
    pending_webhooks: dict[str, int] = field(default_factory=dict)
    # Called with each new event (set by the webhook dispatcher); None: no endpoints.
    on_event: Callable[[Event], None] | None = None

    def now(self) -> int:
        return self.clock.now_int()

    def emit(
        self,
        type_: str,
        obj: Any,
        previous: Json | None = None,
        created: int | None = None,
    ) -> Event:
        request = self.request
        now = self.now()
        event = Event(
            ids.new_id("evt"),
            type_,
            # Never in the future: a test clock's objects may live ahead of the real clock.
            now if created is None else min(created, now),
            obj,
            previous,
            request.request_id if request else None,
            request.idempotency_key if request else None,
        )
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        self.entitlements.observe(self, event)  # a subscription's change may change features
        return event

    def render_event(self, event: Event) -> Json:
        return objects.event(event, self.pending_webhooks.get(event.id, 0))

    def event_json(self, event: Event) -> bytes:
        """`render_event(event)` encoded as JSON (the same bytes as `objects.dumps` gives)."""
        return encode.event_json(event, self.pending_webhooks.get(event.id, 0))

    def customer_now(self, customer_id: str | None) -> int:
        """Now for a customer's objects: its test clock's frozen time, else the clock's."""
        customer = self.customers.rows.get(customer_id) if customer_id else None
        if customer is not None and customer.test_clock is not None:
            clock = self.test_clocks.rows.get(customer.test_clock)
            if clock is not None:
                return clock.frozen_time
        return self.now()

    def retained_since(self) -> int:
        """Oldest `created` still readable: Stripe keeps events for 30 days."""
        return self.now() - RETENTION_SECONDS

    def add_subscription(self, record: Subscription) -> None:
        self.subscriptions.add(record.id, record)
        position = self.subscriptions.order.positions[record.id]
        self.subscriptions_by_customer.setdefault(record.customer, []).append(position)

    def customer_subscriptions(self, customer_id: str) -> list[Subscription]:
        order = self.subscriptions.order.ids
        positions = self.subscriptions_by_customer.get(customer_id, [])
        return [self.subscriptions.rows[order[position]] for position in positions]

    def live_customer(self, customer_id: str, param: str = "customer") -> Customer:
        record = self.customers.get(customer_id, param)
        if record.deleted:
            raise not_found("customer", customer_id, param)
        return record

    def reset(self) -> None:
        fresh = Store()
        for name in (
            "customers",
            "products",
            "prices",
            "subscriptions",
            "checkout_sessions",
            "portal_sessions",
            "invoices",
            "payment_methods",
            "test_clocks",
            "billing_settings",
            "invoice_index",
            "pending_prorations",
            "invoice_base_url",
            "coupons",
            "promotion_codes",
            "discounts",
            "subscriptions_by_customer",
            "events",
            "meters",
            "entitlements",
            "idempotency",
            "pending_webhooks",
        ):
            setattr(self, name, getattr(fresh, name))
        self.clock.reset()
