"""Customers, products and prices: the mutations and the events Stripe emits for them."""

from __future__ import annotations

from typing import Any

from stripe_emulator import ids, objects, payment_methods
from stripe_emulator.diff import previous_attributes
from stripe_emulator.errors import StripeError, bad_request
from stripe_emulator.forms import apply_metadata
from stripe_emulator.records import Customer, Price, Product, Tier, evolve
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import cancel_subscription

CUSTOMER_FIELDS = ("email", "name", "description", "phone", "address")


def _invoice_prefix() -> str:
    return ids.random_part(8).upper()


def create_customer(
    store: Store,
    *,
    metadata: dict[str, str | None] | None = None,
    created: int | None = None,
    payment_method: str | None = None,
    default_payment_method: str | None = None,
    **fields: Any,
) -> Customer:
    """`payment_method` is attached to the new customer; `default_payment_method` (its
    `invoice_settings`) can only name that one, as a new customer has no other card: Stripe's
    test pattern passes the same token to both."""
    if default_payment_method and default_payment_method != payment_method:
        raise StripeError(
            400,
            f"The customer does not have a payment method with the ID {default_payment_method}."
            " The payment method must be attached to the customer.",
            code="resource_missing",
            param="invoice_settings[default_payment_method]",
        )
    if payment_method and payment_method not in payment_methods.TEST_TOKENS:
        payment_methods.check_attachable(store, payment_method, "payment_method")
    record = Customer(
        id=ids.new_id("cus"),
        created=store.now() if created is None else created,
        metadata=apply_metadata({}, metadata),
        invoice_prefix=_invoice_prefix(),
        **{key: value for key, value in fields.items() if value not in (None, "")},
    )
    store.customers.add(record.id, record)
    if payment_method:
        card = payment_methods.attach(store, payment_method, record.id, "payment_method")
        if default_payment_method:
            record = evolve(record, default_payment_method=card.id)
            store.customers.put(record.id, record)
    store.emit("customer.created", record, created=record.created)
    return record


def update_customer(
    store: Store,
    customer_id: str,
    *,
    metadata: dict[str, str | None] | None = None,
    **fields: Any,
) -> Customer:
    old = store.live_customer(customer_id, "id")
    changes = {key: (value or None) for key, value in fields.items() if value is not None}
    new = evolve(old, metadata=apply_metadata(old.metadata, metadata), **changes)
    store.customers.put(new.id, new)
    _emit_update(store, "customer.updated", objects.customer(old), new)
    return new


def delete_customer(store: Store, customer_id: str) -> Customer:
    record = store.live_customer(customer_id, "id")
    # Deleting a customer cancels its subscriptions immediately, each with its own event.
    for sub in store.customer_subscriptions(customer_id):
        if sub.status not in ("canceled", "incomplete_expired"):
            cancel_subscription(store, sub.id)
    store.customers.put(customer_id, evolve(record, deleted=True))
    store.emit("customer.deleted", record)
    return record


def _emit_update(store: Store, type_: str, old_json: objects.Json, new: Any) -> None:
    """Emit `*.updated` with previous_attributes, unless nothing visible changed (as Stripe)."""
    previous = previous_attributes(old_json, _render(new))
    if previous:
        store.emit(type_, new, previous)


def _render(record: Any) -> objects.Json:
    if isinstance(record, Customer):
        return objects.customer(record)
    if isinstance(record, Product):
        return objects.product(record)
    assert isinstance(record, Price)
    return objects.price(record)


def create_product(
    store: Store,
    *,
    name: str,
    active: bool | None = None,
    description: str | None = None,
    metadata: dict[str, str | None] | None = None,
    url: str | None = None,
    product_id: str | None = None,
) -> Product:
    if product_id is not None and product_id in store.products.rows:
        raise StripeError(
            400, f"Product already exists with ID: {product_id}", code="resource_already_exists"
        )
    now = store.now()
    record = Product(
        id=product_id or ids.new_id("prod"),
        created=now,
        updated=now,
        name=name,
        active=True if active is None else active,
        description=description or None,
        metadata=apply_metadata({}, metadata),
        url=url or None,
    )
    store.products.add(record.id, record)
    store.emit("product.created", record)
    return record


def update_product(
    store: Store,
    product_id: str,
    *,
    metadata: dict[str, str | None] | None = None,
    **fields: Any,
) -> Product:
    old = store.products.get(product_id)
    changes = {key: value for key, value in fields.items() if value is not None}
    if changes.get("name") == "":
        raise bad_request("You cannot unset `name`.", "name")
    if "default_price" in changes:
        default = changes["default_price"] or None
        if default is not None and store.prices.get(default, "default_price").product != old.id:
            raise bad_request("The default price must belong to this product.", "default_price")
        changes["default_price"] = default
    for key in ("description", "url"):
        if key in changes:
            changes[key] = changes[key] or None
    new = evolve(
        old, metadata=apply_metadata(old.metadata, metadata), updated=store.now(), **changes
    )
    previous = previous_attributes(objects.product(old), objects.product(new))
    previous.pop("updated", None)
    store.products.put(new.id, new)
    if previous:
        previous["updated"] = old.updated
        store.emit("product.updated", new, previous)
    return new


def create_price(
    store: Store,
    *,
    currency: str,
    unit_amount: int | None,
    product: str | None,
    interval: str | None,
    interval_count: int | None,
    product_name: str | None = None,
    nickname: str | None = None,
    lookup_key: str | None = None,
    metadata: dict[str, str | None] | None = None,
    active: bool | None = None,
    tax_behavior: str | None = None,
    transfer_lookup_key: bool = False,
    meter: str | None = None,
    unit_amount_decimal: str | None = None,
    billing_scheme: str = "per_unit",
    tiers_mode: str | None = None,
    tiers: tuple[Tier, ...] = (),
    transform_quantity: tuple[int, str] | None = None,
) -> Price:
    if lookup_key:
        claim_lookup_key(store, lookup_key, None, transfer_lookup_key)
    if product is None:
        if product_name is None:
            raise StripeError(
                400, "You must specify either `product` or `product_data` when creating a price."
            )
        product = create_product(store, name=product_name).id
    else:
        store.products.get(product, "product")
    record = Price(
        id=ids.new_id("price"),
        created=store.now(),
        product=product,
        currency=currency.lower(),
        unit_amount=unit_amount,
        interval=interval,
        interval_count=interval_count or 1,
        nickname=nickname or None,
        lookup_key=lookup_key or None,
        metadata=apply_metadata({}, metadata),
        active=True if active is None else active,
        tax_behavior=tax_behavior or "unspecified",
        meter=meter,
        unit_amount_decimal=unit_amount_decimal,
        billing_scheme=billing_scheme,
        tiers_mode=tiers_mode,
        tiers=tiers,
        transform_quantity=transform_quantity,
    )
    store.prices.add(record.id, record)
    store.emit("price.created", record)
    return record


def update_price(
    store: Store,
    price_id: str,
    *,
    metadata: dict[str, str | None] | None = None,
    transfer_lookup_key: bool = False,
    **fields: Any,
) -> Price:
    old = store.prices.get(price_id)
    if fields.get("lookup_key"):
        claim_lookup_key(store, fields["lookup_key"], price_id, transfer_lookup_key)
    changes = {key: value for key, value in fields.items() if value is not None}
    for key in ("nickname", "lookup_key"):
        if key in changes:
            changes[key] = changes[key] or None
    new = evolve(old, metadata=apply_metadata(old.metadata, metadata), **changes)
    store.prices.put(new.id, new)
    _emit_update(store, "price.updated", objects.price(old), new)
    return new


def claim_lookup_key(store: Store, key: str, price_id: str | None, transfer: bool) -> None:
    """A lookup key names one price: another price holding it is an error, unless
    `transfer_lookup_key=true` moves it (that price loses it: `price.updated`)."""
    prices = [p for p in store.prices.rows.values() if p.id not in store.prices.gone]  # deleted
    holders = [price for price in prices if price.lookup_key == key and price.id != price_id]
    for holder in holders:
        if not transfer:
            raise bad_request(
                f"A price (`{holder.id}`) already uses that lookup key. Set "
                "`transfer_lookup_key=true` to transfer it to this price.",
                "lookup_key",
            )
        update_price(store, holder.id, lookup_key="")
