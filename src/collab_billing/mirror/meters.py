"""Billing meters: `billing_meters`, a copy of `/v1/billing/meters`.

Not a `MirroredType`: Stripe's v1 Events API has no meter events (meters change through the
dashboard or the API, rarely). The copy is refreshed from the list endpoint on resync, when the
usage sender starts and hourly while it runs, so ingest can check `meter` and the
sender can name the payload keys without a Stripe call.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.dialect import insert
from collab_billing.db.engine import transaction
from collab_billing.db.models import BillingMeter
from collab_billing.state import outbox
from collab_billing.stripe_gateway import StripeGateway
from collab_billing.stripe_gateway.events import decode_object


class CustomerMapping(msgspec.Struct):
    event_payload_key: str = "stripe_customer_id"


class ValueSettings(msgspec.Struct):
    event_payload_key: str = "value"


class Aggregation(msgspec.Struct):
    formula: str = "sum"


class Meter(msgspec.Struct):
    id: str
    event_name: str
    display_name: str = ""
    status: str = "active"
    default_aggregation: Aggregation = msgspec.field(default_factory=Aggregation)
    customer_mapping: CustomerMapping = msgspec.field(default_factory=CustomerMapping)
    value_settings: ValueSettings = msgspec.field(default_factory=ValueSettings)


def _row(meter: Meter) -> dict[str, str]:
    return {
        "stripe_meter_id": meter.id,
        "event_name": meter.event_name,
        "display_name": meter.display_name,
        "status": meter.status,
        "aggregation_formula": meter.default_aggregation.formula,
        "customer_payload_key": meter.customer_mapping.event_payload_key,
        "value_payload_key": meter.value_settings.event_payload_key,
    }


def sync_meters(factory: sessionmaker[Session], gateway: StripeGateway) -> int:
    """Replace `billing_meters` with Stripe's meters (read first, then one short write)."""
    meters = [decode_object(raw, Meter) for raw in gateway.list_all("/v1/billing/meters")]
    with transaction(factory) as session:
        write_meters(session, meters)
    return len(meters)


def write_meters(session: Session, meters: list[Meter]) -> None:
    table = BillingMeter.__table__
    assert isinstance(table, Table)
    listed = [meter.id for meter in meters]
    stored = session.execute(select(table.c.stripe_meter_id, table.c.status))
    if {(meter_id, status) for meter_id, status in stored} != {(m.id, m.status) for m in meters}:
        # A meter turned off (or on, or gone) no longer prices its usage: caps may flip.
        outbox.mark(session, users=outbox.capped_users(session))
    session.execute(delete(table).where(table.c.stripe_meter_id.not_in(listed)))
    if not meters:
        return
    statement = insert(session, table)
    columns = ("event_name", "display_name", "status", "aggregation_formula",
               "customer_payload_key", "value_payload_key")  # fmt: skip
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["stripe_meter_id"],
            set_={name: statement.excluded[name] for name in columns},
        ),
        [_row(meter) for meter in meters],
    )
