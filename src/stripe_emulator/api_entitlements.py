"""`/v1/entitlements/features`, `/v1/products/{id}/features`,
`/v1/entitlements/active_entitlements` (see `entitlements`)."""

from __future__ import annotations

from typing import Any

from stripe_emulator import entitlements
from stripe_emulator.api import Call, list_args, list_table, route
from stripe_emulator.errors import invalid, missing, not_found
from stripe_emulator.forms import apply_metadata
from stripe_emulator.objects import Json
from stripe_emulator.records import evolve


def _name(call: Call, required: bool) -> str | None:
    name = call.params.string("name", required=required)
    if name is not None and not 1 <= len(name) <= 80:
        raise invalid("name", "The name must be between 1 and 80 characters.")
    return name


@route("POST", "/v1/entitlements/features")
def create_feature(call: Call) -> Json:
    p = call.params
    name = _name(call, required=True) or ""
    lookup_key = p.string("lookup_key", required=True) or ""
    if not 1 <= len(lookup_key) <= 80:
        raise invalid("lookup_key", "The lookup_key must be between 1 and 80 characters.")
    metadata = apply_metadata({}, p.metadata())
    p.finish()
    record = entitlements.create_feature(call.store, name, lookup_key, metadata)
    return entitlements.render_feature(record)


@route("GET", "/v1/entitlements/features/{id}")
def retrieve_feature(call: Call) -> Json:
    call.params.finish()
    return entitlements.render_feature(call.store.entitlements.features.get(call.id))


@route("POST", "/v1/entitlements/features/{id}")
def update_feature(call: Call) -> Json:
    p = call.params
    table = call.store.entitlements.features
    record = table.get(call.id)
    name = _name(call, required=False)
    active = p.boolean("active")
    changes = p.metadata()
    p.finish()
    updated = evolve(
        record,
        name=record.name if name is None else name,
        active=record.active if active is None else active,
        metadata=apply_metadata(record.metadata, changes),
    )
    table.put(record.id, updated)
    return entitlements.render_feature(updated)


@route("GET", "/v1/entitlements/features")
def list_features(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    archived = p.boolean("archived")
    lookup_key = p.string("lookup_key")
    p.finish()

    def keep(record: Any) -> bool:
        # Archived (inactive) features are listed only when asked for.
        if record.active == bool(archived):
            return False
        return lookup_key is None or record.lookup_key == lookup_key

    return list_table(
        call.store.entitlements.features,
        args,
        "/v1/entitlements/features",
        entitlements.render_feature,
        keep,
    )


# --- product features ----------------------------------------------------------------------


@route("POST", "/v1/products/{product}/features")
def attach_feature(call: Call) -> Json:
    p = call.params
    feature = p.string("entitlement_feature", required=True) or ""
    p.finish()
    record = entitlements.attach(call.store, call.path["product"], feature)
    return entitlements.render_product_feature(call.store, record)


@route("GET", "/v1/products/{product}/features")
def list_product_features(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    p.finish()
    product = call.path["product"]
    call.store.products.get(product, "product")
    state = call.store.entitlements
    attached = set(state.by_product.get(product, []))
    order = state.product_features.order.positions
    return list_table(
        state.product_features,
        args,
        f"/v1/products/{product}/features",
        lambda record: entitlements.render_product_feature(call.store, record),
        positions=sorted(order[pf] for pf in attached),
    )


@route("GET", "/v1/products/{product}/features/{id}")
def retrieve_product_feature(call: Call) -> Json:
    call.params.finish()
    product = call.path["product"]
    if call.id not in call.store.entitlements.by_product.get(product, []):
        raise not_found("product_feature", call.id)
    record = call.store.entitlements.product_features.get(call.id)
    return entitlements.render_product_feature(call.store, record)


@route("DELETE", "/v1/products/{product}/features/{id}")
def detach_feature(call: Call) -> Json:
    call.params.finish()
    entitlements.detach(call.store, call.path["product"], call.id)
    return {"id": call.id, "object": "product_feature", "deleted": True}


# --- active entitlements -------------------------------------------------------------------


@route("GET", "/v1/entitlements/active_entitlements")
def list_active_entitlements(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    customer = p.string("customer")
    if not customer:
        raise missing("customer")
    p.finish()
    call.store.customers.get(customer, "customer")
    table = call.store.entitlements.active.get(customer)
    if table is None:
        table = entitlements.new_table("entitlements.active_entitlement")
    return list_table(
        table, args, "/v1/entitlements/active_entitlements", entitlements.render_active
    )


@route("GET", "/v1/entitlements/active_entitlements/{id}")
def retrieve_active_entitlement(call: Call) -> Json:
    call.params.finish()
    for table in call.store.entitlements.active.values():
        record = table.rows.get(call.id)
        if record is not None:
            return entitlements.render_active(record)
    raise not_found("entitlements.active_entitlement", call.id)
