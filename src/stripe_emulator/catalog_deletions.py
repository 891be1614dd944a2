"""Deleting catalog objects: `DELETE /v1/products/{id}` (Stripe refuses a product that has
prices) and a price deleted in the Dashboard (no API route exists; a control route does it).

A deleted object is gone from the API (404, left out of lists) and its event carries the
object as it was: `product.deleted`, `price.deleted`.
"""

from __future__ import annotations

from stripe_emulator import objects
from stripe_emulator.api import Call, route
from stripe_emulator.errors import bad_request
from stripe_emulator.objects import Json
from stripe_emulator.store import Store


@route("DELETE", "/v1/products/{id}")
def delete_product(call: Call) -> Json:
    call.params.finish()
    store = call.store
    product = store.products.get(call.id)
    prices = store.prices
    if any(p.product == product.id and p.id not in prices.gone for p in prices.rows.values()):
        raise bad_request(
            "This product cannot be deleted because it has one or more user-created prices."
        )
    store.products.gone.add(product.id)
    store.emit("product.deleted", product)
    return {"id": product.id, "object": "product", "deleted": True}


def delete_price(store: Store, price_id: str) -> Json:
    """What deleting a price in the Dashboard does; answers the price as it was."""
    price = store.prices.get(price_id)
    store.prices.gone.add(price.id)
    store.emit("price.deleted", price)
    return objects.price(price)
