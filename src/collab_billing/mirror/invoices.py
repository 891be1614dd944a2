"""Invoices: `billing_invoices`, one row per Stripe invoice of our customers.

What the access rules (billing/access.py) and `GET /billing/invoices` need: status, amounts,
the hosted page, attempts and the next automatic retry, the period. Everything is taken from
the invoice object alone (never from which event carried it), so a resync rebuilds the same
rows and ties converge like subscriptions'. Since API 2025-03-31 an invoice names its
subscription under `parent.subscription_details.subscription`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from collab_billing.db.models import BillingInvoice
from collab_billing.mirror.types import MirroredType, stripe_time
from collab_billing.stripe_gateway.events import Ref, id_of


class SubscriptionDetails(msgspec.Struct):
    subscription: str | Ref | None = None


class Parent(msgspec.Struct):
    subscription_details: SubscriptionDetails | None = None


class StatusTransitions(msgspec.Struct):
    finalized_at: int | None = None
    paid_at: int | None = None


class Invoice(msgspec.Struct):
    """The fields of a Stripe invoice that the service keeps."""

    id: str
    customer: str | Ref
    status: str | None = None
    currency: str = ""
    amount_due: int = 0
    amount_paid: int = 0
    amount_remaining: int = 0
    hosted_invoice_url: str | None = None
    number: str | None = None
    billing_reason: str | None = None
    attempt_count: int = 0
    next_payment_attempt: int | None = None
    created: int = 0
    due_date: int | None = None
    period_start: int | None = None
    period_end: int | None = None
    parent: Parent | None = None
    status_transitions: StatusTransitions = msgspec.field(default_factory=StatusTransitions)


def subscription_of(invoice: Invoice) -> str | None:
    details = invoice.parent.subscription_details if invoice.parent else None
    return id_of(details.subscription) if details and details.subscription else None


def columns(invoice: Invoice) -> dict[str, Any]:
    return {
        "stripe_subscription_id": subscription_of(invoice),
        "stripe_customer_id": id_of(invoice.customer),
        "status": invoice.status or "draft",
        "currency": invoice.currency,
        "amount_due": invoice.amount_due,
        "amount_paid": invoice.amount_paid,
        "amount_remaining": invoice.amount_remaining,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "number": invoice.number,
        "billing_reason": invoice.billing_reason,
        "attempt_count": invoice.attempt_count,
        "next_payment_attempt": stripe_time(invoice.next_payment_attempt),
        "stripe_created": datetime.fromtimestamp(invoice.created, UTC),
        "finalized_at": stripe_time(invoice.status_transitions.finalized_at),
        "paid_at": stripe_time(invoice.status_transitions.paid_at),
        "due_date": stripe_time(invoice.due_date),
        "period_start": stripe_time(invoice.period_start),
        "period_end": stripe_time(invoice.period_end),
    }


INVOICES = MirroredType(
    kind="invoice",
    event_types=(
        "invoice.created",
        "invoice.updated",
        "invoice.finalized",
        "invoice.finalization_failed",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.payment_succeeded",
        "invoice.payment_action_required",
        "invoice.marked_uncollectible",
        "invoice.voided",
        "invoice.overdue",
        "invoice.sent",
    ),
    object_type=Invoice,
    table=BillingInvoice.__table__,  # type: ignore[arg-type]
    key="stripe_invoice_id",
    columns=columns,
    object_id=lambda invoice: invoice.id,
    owner=lambda invoice: id_of(invoice.customer),
    retrieve_path="/v1/invoices/{id}",
    list_path="/v1/invoices",
)
