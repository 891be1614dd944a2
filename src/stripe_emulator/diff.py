"""`data.previous_attributes` for `*.updated` events, computed the way Stripe presents them.

Stripe lists only the attributes that changed, with their old values. For hashes it recurses
(a metadata key that was added appears with `null`), while arrays and lists are given whole.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def previous_attributes(old: Json, new: Json) -> Json:
    previous: Json = {}
    for key in old.keys() | new.keys():
        before = old.get(key)
        after = new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and before.get("object") != "list":
            previous[key] = previous_attributes(before, after)
        elif isinstance(before, dict) and before.get("object") == "list":
            # A changed list (subscription items): Stripe gives the old `data` whole.
            previous[key] = {"data": before.get("data")}
        else:
            previous[key] = before
    return previous
