"""Entitlements: `billing_entitlements`, the features each customer of ours is entitled to now.

Stripe tells of a change with `entitlements.active_entitlement_summary.updated`, whose object
lists at most ten entitlements. Its payload is never written: the event only makes the
applier list the customer's active entitlements in full (`fetch`, every page), outside its
transaction like every Stripe read, and the customer's rows are replaced by that list.
The summary's watermark lives in `billing_entitlement_syncs` (one row per customer, so a
customer left with no feature still has one). Resync lists them for each customer of ours.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import delete
from sqlalchemy.orm import Session

from collab_billing.db.dialect import insert
from collab_billing.db.models import BillingEntitlement, BillingEntitlementSync
from collab_billing.mirror.types import MirroredType
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.events import Ref, id_of

LIST_PATH = "/v1/entitlements/active_entitlements"


class ActiveEntitlement(msgspec.Struct):
    id: str
    feature: str | Ref
    lookup_key: str


class EntitlementList(msgspec.Struct):
    data: list[ActiveEntitlement] = []


class EntitlementSummary(msgspec.Struct):
    """The summary event's object; from `fetch`, with every entitlement of the customer."""

    customer: str
    entitlements: EntitlementList = msgspec.field(default_factory=EntitlementList)


def fetch(gateway: StripeGateway, customer_id: str) -> EntitlementSummary:
    """The customer's active entitlements, every page of them. A deleted customer (404) has
    none."""
    try:
        listed = [
            msgspec.json.decode(raw, type=ActiveEntitlement)
            for raw in gateway.list_all(LIST_PATH, customer=customer_id)
        ]
    except StripeGatewayError as error:
        if error.http_status != 404:
            raise
        listed = []
    return EntitlementSummary(customer_id, EntitlementList(listed))


def replace_rows(session: Session, written: list[tuple[EntitlementSummary, int | None]]) -> None:
    """Each customer's `billing_entitlements` rows become the listed ones."""
    by_customer = {cid: summary for summary, cid in written if cid is not None}
    if not by_customer:
        return
    session.execute(
        delete(BillingEntitlement).where(BillingEntitlement.billing_customer_id.in_(by_customer))
    )
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for cid, summary in by_customer.items():
        for entitlement in summary.entitlements.data:
            feature = id_of(entitlement.feature)
            rows[(cid, feature)] = {
                "billing_customer_id": cid,
                "stripe_feature_id": feature,
                "lookup_key": entitlement.lookup_key,
            }
    if rows:
        session.connection().execute(insert(session, BillingEntitlement), list(rows.values()))


ENTITLEMENTS = MirroredType(
    kind="entitlement",
    event_types=("entitlements.active_entitlement_summary.updated",),
    object_type=EntitlementSummary,
    table=BillingEntitlementSync.__table__,  # type: ignore[arg-type]
    key="stripe_customer_id",
    columns=lambda summary: {},
    object_id=lambda summary: summary.customer,
    owner=lambda summary: summary.customer,
    retrieve_path="",
    list_path=LIST_PATH,
    trust_payload=False,
    fetch=fetch,
    after_write=replace_rows,
)
