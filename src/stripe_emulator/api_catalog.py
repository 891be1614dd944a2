"""`/v1/customers`, `/v1/products`, `/v1/prices`."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from stripe_emulator import catalog, objects, tiers
from stripe_emulator.api import Call, created_range, list_args, list_table, route
from stripe_emulator.errors import invalid, missing
from stripe_emulator.forms import Params
from stripe_emulator.objects import Json
from stripe_emulator.payment_methods import customers_card
from stripe_emulator.store import Store
from stripe_emulator.test_clocks import live_clock

# Parameters Stripe accepts that the emulator stores nowhere (accepted so clients work).
_CUSTOMER_IGNORED = (
    "balance", "cash_balance", "invoice_prefix",
    "next_invoice_sequence", "preferred_locales",
    "shipping", "source", "tax", "tax_exempt", "tax_id_data", "test_clock", "validate",
    "business_name", "individual_name", "default_source",
)  # fmt: skip
_ADDRESS = ("city", "country", "line1", "line2", "postal_code", "state")


def _in_range(created: int, bounds: tuple[int | None, int | None]) -> bool:
    gte, lt = bounds
    return (gte is None or created >= gte) and (lt is None or created < lt)


def _customer_fields(p: Params) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: p.string(name) for name in ("email", "name", "description", "phone")
    }
    address = p.raw("address")
    if address == "":
        fields["address"] = ""  # unset: the update turns "" into None
    elif address is not None:
        parts = p.hash("address")
        assert parts is not None
        fields["address"] = {key: parts.string(key) or None for key in _ADDRESS}
    p.ignore(*_CUSTOMER_IGNORED)
    return fields


@route("POST", "/v1/customers")
def create_customer(call: Call) -> Json:
    p = call.params
    clock_id = p.string("test_clock")
    fields = _customer_fields(p)
    fields["payment_method"] = p.string("payment_method")
    settings = p.hash("invoice_settings")
    if settings is not None:
        settings.ignore("custom_fields", "footer", "rendering_options")
        fields["default_payment_method"] = settings.string("default_payment_method")
    metadata = p.metadata()
    p.finish()
    if clock_id:
        # A test clock's customer lives on its time (see test_clocks.py).
        clock = live_clock(call.store, clock_id, "test_clock")
        fields.update(test_clock=clock.id, created=clock.frozen_time)
    return objects.customer(catalog.create_customer(call.store, metadata=metadata, **fields))


@route("GET", "/v1/customers/{id}")
def retrieve_customer(call: Call) -> Json:
    call.params.finish()
    return objects.customer(call.store.customers.get(call.id))


def _invoice_settings(call: Call, p: Params) -> dict[str, Any]:
    """`invoice_settings[default_payment_method]`: one of the customer's cards ("" clears)."""
    settings = p.hash("invoice_settings")
    if settings is None:
        return {}
    settings.ignore("custom_fields", "footer", "rendering_options")
    chosen = settings.string("default_payment_method")
    if chosen is None:
        return {}
    if chosen:
        param = "invoice_settings[default_payment_method]"
        customers_card(call.store, chosen, call.id, param)
    return {"default_payment_method": chosen}


@route("POST", "/v1/customers/{id}")
def update_customer(call: Call) -> Json:
    p = call.params
    fields = {**_customer_fields(p), **_invoice_settings(call, p)}
    metadata = p.metadata()
    p.finish()
    return objects.customer(
        catalog.update_customer(call.store, call.id, metadata=metadata, **fields)
    )


@route("DELETE", "/v1/customers/{id}")
def delete_customer(call: Call) -> Json:
    call.params.finish()
    record = catalog.delete_customer(call.store, call.id)
    return objects.deleted_customer(record.id)


@route("GET", "/v1/customers")
def list_customers(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    email = p.string("email")
    created = created_range(p)
    p.ignore("test_clock")
    p.finish()

    def keep(record: Any) -> bool:
        if record.deleted or not _in_range(record.created, created):
            return False
        return email is None or record.email == email

    return list_table(call.store.customers, args, "/v1/customers", objects.customer, keep)


# --- products ------------------------------------------------------------------------------

_PRODUCT_IGNORED = (
    "images", "marketing_features", "package_dimensions", "shippable",
    "statement_descriptor", "tax_code", "unit_label", "tax_details",
)  # fmt: skip


@route("POST", "/v1/products")
def create_product(call: Call) -> Json:
    p = call.params
    p.ignore(*_PRODUCT_IGNORED)
    fields: dict[str, Any] = {
        "name": p.string("name", required=True) or "",
        "active": p.boolean("active"),
        "description": p.string("description"),
        "metadata": p.metadata(),
        "url": p.string("url"),
        "product_id": p.string("id"),
    }
    price_data = p.hash("default_price_data")
    price_fields = (
        _price_fields(price_data, with_product=False, call_store=call.store) if price_data else None
    )
    p.finish()
    record = catalog.create_product(call.store, **fields)
    if price_fields is not None:
        price = catalog.create_price(call.store, product=record.id, **price_fields)
        record = catalog.update_product(call.store, record.id, default_price=price.id)
    return objects.product(record)


@route("GET", "/v1/products/{id}")
def retrieve_product(call: Call) -> Json:
    call.params.finish()
    return objects.product(call.store.products.get(call.id))


@route("POST", "/v1/products/{id}")
def update_product(call: Call) -> Json:
    p = call.params
    p.ignore(*_PRODUCT_IGNORED)
    fields = {
        "name": p.string("name"),
        "active": p.boolean("active"),
        "description": p.string("description"),
        "url": p.string("url"),
        "default_price": p.string("default_price"),
    }
    metadata = p.metadata()
    p.finish()
    return objects.product(catalog.update_product(call.store, call.id, metadata=metadata, **fields))


@route("GET", "/v1/products")
def list_products(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    active = p.boolean("active")
    wanted = p.array("ids")
    created = created_range(p)
    p.ignore("shippable", "url")
    p.finish()

    def keep(record: Any) -> bool:
        if active is not None and record.active != active:
            return False
        return (wanted is None or record.id in wanted) and _in_range(record.created, created)

    return list_table(call.store.products, args, "/v1/products", objects.product, keep)


# --- prices --------------------------------------------------------------------------------


def _metered(store: Store, recurring: Params) -> str | None:
    """The meter of a `usage_type=metered` price (Stripe requires one since 2025-03-31)."""
    usage_type = recurring.string("usage_type", choices=("licensed", "metered"))
    meter = recurring.string("meter")
    if usage_type != "metered":
        if meter:
            raise invalid(recurring.name("meter"), "A meter is only allowed on metered prices.")
        return None
    if not meter:
        raise missing(recurring.name("meter"))
    store.meters.meters.get(meter, recurring.name("meter"))
    return meter


def _amount(p: Params) -> tuple[int | None, str | None]:
    """`unit_amount`, or `unit_amount_decimal` (then `unit_amount` is null unless whole)."""
    amount = p.integer("unit_amount", minimum=0)
    text = p.string("unit_amount_decimal")
    if amount is not None:
        return amount, None
    if not text:
        raise missing(p.name("unit_amount"))
    try:
        decimal = Decimal(text)
    except InvalidOperation:
        decimal = Decimal(-1)
    if not decimal.is_finite() or decimal < 0:
        raise invalid(p.name("unit_amount_decimal"), f"Invalid decimal: {text}")
    if decimal == decimal.to_integral_value():
        return int(decimal), None
    return None, format(decimal.normalize(), "f")


def _transform_quantity(p: Params) -> tuple[int, str] | None:
    transform = p.hash("transform_quantity")
    if transform is None:
        return None
    divide_by = transform.integer("divide_by", required=True, minimum=1)
    rounding = transform.string("round", required=True, choices=("up", "down"))
    assert divide_by is not None and rounding is not None
    return divide_by, rounding


def _price_fields(
    p: Params, *, with_product: bool, call_store: Store, tiered: bool = False
) -> dict[str, Any]:
    """Parse price-creation parameters (also used by `default_price_data`, never tiered)."""
    recurring = p.hash("recurring")
    interval = interval_count = meter = None
    if recurring is not None:
        interval = recurring.string(
            "interval", required=True, choices=("day", "week", "month", "year")
        )
        interval_count = recurring.integer("interval_count", minimum=1)
        meter = _metered(call_store, recurring)
        recurring.ignore("trial_period_days")
    if tiered:
        amount, decimal = None, None
        tier_fields = tiers.parse(p, recurring is not None)
    else:
        tiers.refuse_tier_params(p)
        amount, decimal = _amount(p)
        tier_fields = {"transform_quantity": _transform_quantity(p)}
    fields: dict[str, Any] = {
        **tier_fields,
        "currency": p.string("currency", required=True),
        "unit_amount": amount,
        "interval": interval,
        "interval_count": interval_count,
        "meter": meter,
        "unit_amount_decimal": decimal,
        "metadata": p.metadata(),
        "tax_behavior": p.string("tax_behavior", choices=("exclusive", "inclusive", "unspecified")),
    }
    if with_product:
        product_data = p.hash("product_data")
        fields["product"] = p.string("product")
        fields["product_name"] = None
        if product_data is not None:
            fields["product_name"] = product_data.string("name", required=True)
            product_data.ignore(
                "active", "metadata", "statement_descriptor", "tax_code", "unit_label", "id"
            )
        fields.update(
            nickname=p.string("nickname"),
            lookup_key=p.string("lookup_key"),
            active=p.boolean("active"),
        )
    return fields


@route("POST", "/v1/prices")
def create_price(call: Call) -> Json:
    p = call.params
    scheme = p.string("billing_scheme", choices=("per_unit", "tiered"))
    p.ignore("currency_options")
    tiered = scheme == "tiered"
    fields = _price_fields(p, with_product=True, call_store=call.store, tiered=tiered)
    fields["transfer_lookup_key"] = bool(p.boolean("transfer_lookup_key"))
    p.finish()
    return objects.price(catalog.create_price(call.store, **fields))


@route("GET", "/v1/prices/{id}")
def retrieve_price(call: Call) -> Json:
    call.params.finish()
    return objects.price(call.store.prices.get(call.id))


@route("POST", "/v1/prices/{id}")
def update_price(call: Call) -> Json:
    p = call.params
    fields: dict[str, Any] = {
        "active": p.boolean("active"),
        "nickname": p.string("nickname"),
        "lookup_key": p.string("lookup_key"),
        "tax_behavior": p.string("tax_behavior", choices=("exclusive", "inclusive", "unspecified")),
    }
    metadata = p.metadata()
    fields["transfer_lookup_key"] = bool(p.boolean("transfer_lookup_key"))
    p.ignore("currency_options")
    p.finish()
    return objects.price(catalog.update_price(call.store, call.id, metadata=metadata, **fields))


@route("GET", "/v1/prices")
def list_prices(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    filters = {
        "active": p.boolean("active"),
        "product": p.string("product"),
        "currency": p.string("currency"),
    }
    kind = p.string("type", choices=("one_time", "recurring"))
    lookup_keys = p.array("lookup_keys")
    recurring = p.hash("recurring")
    interval = recurring.string("interval") if recurring is not None else None
    meter = recurring.string("meter") if recurring is not None else None
    usage_type = recurring.string("usage_type") if recurring is not None else None
    created = created_range(p)
    p.finish()

    def keep(record: Any) -> bool:
        if any(
            value is not None and getattr(record, name) != value for name, value in filters.items()
        ):
            return False
        if kind is not None and (record.interval is not None) != (kind == "recurring"):
            return False
        if lookup_keys is not None and record.lookup_key not in lookup_keys:
            return False
        if interval is not None and record.interval != interval:
            return False
        if meter is not None and record.meter != meter:
            return False
        if usage_type is not None and (record.meter is not None) != (usage_type == "metered"):
            return False
        return _in_range(record.created, created)

    return list_table(call.store.prices, args, "/v1/prices", objects.price, keep)
