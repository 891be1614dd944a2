"""Tiered prices: `billing_scheme=tiered`, `tiers_mode` (`graduated` | `volume`), `tiers[]`.

Parsed and refused as Stripe does (a tiered price is recurring, has a `tiers_mode` and tiers in
ascending `up_to` whose last is `inf`, each with a unit or a flat amount; no `unit_amount`).
Rendered only when asked for: `tiers` is an includable field (`expand[]=tiers`, or
`expand[]=data.tiers` on a list), absent otherwise, also from events' objects.

Pricing a quantity (`amount`): graduated sums each tier's units at its unit amount plus the
flat amount of each tier reached; volume prices every unit at the tier the total falls in, plus
that tier's flat amount. A quantity of 0 reaches no tier (nothing billed). The exact amount is
rounded once, half up to the cent, by the invoice line (as per-unit amounts are).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from itertools import pairwise
from typing import Any

from stripe_emulator.errors import bad_request, invalid, missing
from stripe_emulator.forms import Params
from stripe_emulator.records import Price, Tier

Json = dict[str, Any]


def _decimal(p: Params, key: str) -> str | None:
    """`<key>` (integer cents) or `<key>_decimal` (at most 12 decimal places), not both."""
    whole = p.integer(key, minimum=0)
    text = p.string(f"{key}_decimal")
    if whole is not None and text:
        raise bad_request(
            f"You may only specify one of these parameters: {key}, {key}_decimal.", p.name(key)
        )
    if whole is not None:
        return str(whole)
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0 or -value.as_tuple().exponent > 12:  # type: ignore[operator]
        raise invalid(p.name(f"{key}_decimal"), f"Invalid decimal: {text}")
    return format(value.normalize(), "f")


def _up_to(p: Params) -> int | None:
    text = p.string("up_to", required=True)
    if text == "inf":
        return None
    try:
        value = int(text or "")
    except ValueError:
        raise invalid(
            p.name("up_to"), f"Invalid integer: {text}", code="parameter_invalid_integer"
        ) from None
    if value < 1:
        raise invalid(p.name("up_to"), f"Invalid {p.name('up_to')}: must be at least 1")
    return value


def _tier(p: Params) -> Tier:
    tier = Tier(_up_to(p), _decimal(p, "unit_amount"), _decimal(p, "flat_amount"))
    if tier.unit_amount is None and tier.flat_amount is None:
        raise bad_request(
            "Each tier must have either a `unit_amount` or a `flat_amount` (or both).",
            p.name("unit_amount"),
        )
    return tier


def parse(p: Params, recurring: bool) -> dict[str, Any]:
    """The tier fields of a price being created with `billing_scheme=tiered`."""
    if not recurring:
        raise bad_request("Tiered prices must be recurring: set `recurring`.", "billing_scheme")
    for key in ("unit_amount", "unit_amount_decimal"):
        if p.has(key):
            raise bad_request(
                f"You may not specify `{key}` when `billing_scheme` is `tiered`.", key
            )
    mode = p.string("tiers_mode", required=True, choices=("graduated", "volume"))
    listed = p.dicts("tiers", required=True) or []
    if not listed:
        raise missing("tiers")
    tiers = tuple(_tier(tier) for tier in listed)
    bounds = [tier.up_to for tier in tiers]
    if bounds[-1] is not None or None in bounds[:-1]:
        raise invalid("tiers", "The last tier must have `up_to` set to `inf`, and only the last.")
    finite = [bound for bound in bounds if bound is not None]
    if any(low >= high for low, high in pairwise(finite)):
        raise invalid("tiers", "Tiers must be in strictly ascending order of `up_to`.")
    return {"billing_scheme": "tiered", "tiers_mode": mode, "tiers": tiers}


def refuse_tier_params(p: Params) -> None:
    """`tiers` and `tiers_mode` belong to tiered prices only."""
    for key in ("tiers", "tiers_mode"):
        if p.has(key):
            raise bad_request(f"`{key}` requires `billing_scheme` to be `tiered`.", key)


def _amount_json(text: str | None) -> tuple[int | None, str | None]:
    if text is None:
        return None, None
    value = Decimal(text)
    return (int(value) if value == value.to_integral_value() else None), text


def render(price: Price) -> list[Json]:
    rendered = []
    for tier in price.tiers:
        unit, unit_text = _amount_json(tier.unit_amount)
        flat, flat_text = _amount_json(tier.flat_amount)
        rendered.append(
            {
                "flat_amount": flat,
                "flat_amount_decimal": flat_text,
                "unit_amount": unit,
                "unit_amount_decimal": unit_text,
                "up_to": tier.up_to,
            }
        )
    return rendered


def _cents(text: str | None) -> Decimal:
    return Decimal(text) if text is not None else Decimal(0)


def amount(price: Price, quantity: Decimal) -> Decimal:
    """The exact amount in cents of `quantity` units of a tiered price (unrounded)."""
    if quantity <= 0:
        return Decimal(0)
    if price.tiers_mode == "volume":
        tier = next(t for t in price.tiers if t.up_to is None or quantity <= t.up_to)
        return _cents(tier.unit_amount) * quantity + _cents(tier.flat_amount)
    total, floor = Decimal(0), Decimal(0)
    for tier in price.tiers:
        top = quantity if tier.up_to is None else min(quantity, Decimal(tier.up_to))
        total += _cents(tier.unit_amount) * (top - floor) + _cents(tier.flat_amount)
        if tier.up_to is None or quantity <= tier.up_to:
            break
        floor = Decimal(tier.up_to)
    return total
