"""Ordering events of one subscription that share a `created` second."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from collab_billing.reconcile.ordering import final_event
from collab_billing.stripe_gateway import Event


def event(kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> Event:
    data: dict[str, Any] = {"object": {"id": "sub_1", **obj}}
    if previous is not None:
        data["previous_attributes"] = previous
    return Event.from_dict(
        {
            "id": f"evt_{kind}_{obj}",
            "type": f"customer.subscription.{kind}",
            "created": 1_700_000_000,
            "data": data,
        }
    )


CREATED = event("created", {"status": "incomplete", "cancel_at_period_end": False})
ACTIVATED = event(
    "updated", {"status": "active", "cancel_at_period_end": False}, {"status": "incomplete"}
)
CANCEL_SCHEDULED = event(
    "updated", {"status": "active", "cancel_at_period_end": True}, {"cancel_at_period_end": False}
)
DELETED = event("deleted", {"status": "canceled", "cancel_at_period_end": True})


def test_a_single_event_is_final() -> None:
    assert final_event([ACTIVATED]) is ACTIVATED


@given(st.permutations([CREATED, ACTIVATED, CANCEL_SCHEDULED]))
def test_a_chain_of_previous_attributes_fixes_the_order(tied: list[Event]) -> None:
    assert final_event(tied) is CANCEL_SCHEDULED


@given(st.permutations([CREATED, ACTIVATED, DELETED]))
def test_a_deletion_is_last(tied: list[Event]) -> None:
    assert final_event(tied) is DELETED


def test_ambiguous_updates_are_not_guessed() -> None:
    # Two updates that each undo the other: either could be last.
    on = event("updated", {"cancel_at_period_end": True}, {"cancel_at_period_end": False})
    off = event("updated", {"cancel_at_period_end": False}, {"cancel_at_period_end": True})
    assert final_event([on, off]) is None
    assert final_event([off, on]) is None


def test_events_without_previous_attributes_have_no_provable_place() -> None:
    notice = event("trial_will_end", {"status": "trialing"})
    assert final_event([ACTIVATED, notice]) is None


def test_nested_previous_attributes_match_partially() -> None:
    first = event(
        "updated", {"status": "active", "metadata": {"a": "1", "b": "2"}}, {"status": "x"}
    )
    second = event(
        "updated", {"status": "active", "metadata": {"a": "3", "b": "2"}}, {"metadata": {"a": "1"}}
    )
    assert final_event([second, first]) is second


def test_orders_that_end_in_the_same_state_settle_it() -> None:
    # Each could have come after the other (neither changes what the other was made from).
    first = event("updated", {"metadata": {"a": "1"}, "n": 1}, {"metadata": {"a": "1"}})
    same = event("pending_update_applied", {"metadata": {"a": "1"}, "n": 1}, {"metadata": {}})
    other = event("pending_update_applied", {"metadata": {"a": "1"}, "n": 2}, {"metadata": {}})
    assert final_event([first, same]) in (first, same)
    assert final_event([first, other]) is None
