"""A subscription's items: built from `items[]` specs, and merged with an update's specs."""

from __future__ import annotations

from dataclasses import dataclass

from stripe_emulator import ids
from stripe_emulator.errors import bad_request
from stripe_emulator.records import Item, Price, evolve


@dataclass
class ItemSpec:
    price: Price | None
    quantity: int | None = None
    metadata: dict[str, str] | None = None
    id: str | None = None  # an existing item to change (`items[0][id]`)
    deleted: bool = False  # remove the existing item `id` (`items[0][deleted]=true`)


def build_items(specs: list[ItemSpec], created: int) -> tuple[Item, ...]:
    items = []
    for spec in specs:
        assert spec.price is not None  # new items name their price (checked when parsed)
        metadata = spec.metadata or {}
        quantity = 0 if spec.price.meter is not None else spec.quantity or 1
        items.append(Item(ids.new_id("si"), created, spec.price, quantity, metadata))
    return _one_item_a_price(tuple(items))


def _one_item_a_price(items: tuple[Item, ...]) -> tuple[Item, ...]:
    """Stripe refuses two items of one price on a subscription (the seats are one item's
    quantity), in the words of its older `plan` API."""
    seen: set[str] = set()
    for item in items:
        if item.price.id in seen:
            raise bad_request(
                f"Cannot add multiple subscription items with the same plan: {item.price.id}",
                "items",
            )
        seen.add(item.price.id)
    return items


def merge_items(old: tuple[Item, ...], specs: list[ItemSpec], now: int) -> tuple[Item, ...]:
    """Stripe's `items` update: a spec with an `id` changes that item (price, quantity,
    metadata) and keeps its id; a spec without one adds an item; the items not named stay."""
    by_id = {item.id: item for item in old}
    changed = dict(by_id)
    added = []
    for index, spec in enumerate(specs):
        if spec.id is None:
            added.append(spec)
            continue
        item = by_id.get(spec.id)
        if item is None:
            raise bad_request(f"No such subscription item: '{spec.id}'", "items")
        if spec.deleted:
            del changed[spec.id]
            continue
        price = spec.price or item.price
        if price.meter is not None and spec.quantity is not None:
            param = f"items[{index}][quantity]"
            raise bad_request("You cannot set the quantity for metered plans.", param)
        changed[spec.id] = evolve(
            item,
            price=price,
            quantity=0 if price.meter is not None else spec.quantity or item.quantity or 1,
            metadata=spec.metadata if spec.metadata else item.metadata,
        )
    items = tuple(changed.values()) + build_items(added, now)
    if not items:
        raise bad_request("A subscription must have at least one active plan.", "items")
    return _one_item_a_price(items)
