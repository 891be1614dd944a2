"""Cutting a sorted backlog into batches: seconds stay whole unless larger than a batch, and then
only whole objects move, customers first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from collab_billing.reconcile.groups import group_events
from collab_billing.reconcile.windows import batches
from collab_billing.stripe_gateway import Event

TYPES = ["customer.created", "customer.updated", "customer.subscription.updated"]


def make_event(number: int, created: int, kind: int, obj: int) -> Event:
    event_type = TYPES[kind]
    prefix = "sub" if event_type.startswith("customer.subscription.") else "cus"
    return Event.from_dict(
        {
            "id": f"evt_{number}",
            "type": event_type,
            "created": 1_700_000_000 + created,
            "data": {"object": {"id": f"{prefix}_{obj}", "customer": "cus_0", "status": "active"}},
        }
    )


backlogs = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 6)), max_size=80
).map(
    lambda rows: [
        make_event(n, created, kind, obj)
        for n, (created, kind, obj) in enumerate(sorted(rows, key=lambda row: row[0]))
    ]
)


def key(event: Event) -> tuple[str, str]:
    (group,) = group_events([event])
    return group.kind, group.object_id


@given(backlogs, st.integers(1, 12))
def test_every_event_once_in_created_order(events: list[Event], size: int) -> None:
    cut = list(batches(events, size))
    flat = [event for batch in cut for event in batch]
    assert sorted(e.id for e in flat) == sorted(e.id for e in events)
    assert [e.created for e in flat] == sorted(e.created for e in flat)
    for obj in {key(e) for e in events}:  # each object's events keep their order
        assert [e.id for e in flat if key(e) == obj] == [e.id for e in events if key(e) == obj]


@given(backlogs, st.integers(1, 12))
def test_only_seconds_larger_than_a_batch_are_cut_and_only_between_objects(
    events: list[Event], size: int
) -> None:
    cut = list(batches(events, size))
    per_second = {e.created: sum(1 for x in events if x.created == e.created) for e in events}
    homes: dict[tuple[tuple[str, str], int], set[int]] = {}
    for number, batch in enumerate(cut):
        for event in batch:
            homes.setdefault((key(event), event.created), set()).add(number)
        seconds = {e.created for e in batch}
        if len(seconds) > 1 or per_second[batch[0].created] <= size:
            # Whole seconds, the batch filled only up to the second that reached `size`.
            assert all(per_second[s] <= size for s in seconds)
            assert all(sum(1 for e in batch if e.created == s) == per_second[s] for s in seconds)
            assert len(batch) - sum(1 for e in batch if e.created == max(seconds)) < size
        else:
            objects = {key(e) for e in batch}
            assert len(batch) <= size or len(objects) == 1
    assert all(len(found) == 1 for found in homes.values()), "an object's tie was split"
    split = {s for s, n in per_second.items() if n > size}
    for second in split:
        kinds = [key(e)[0] for batch in cut for e in batch if e.created == second]
        assert kinds == sorted(kinds, key=["customer", "subscription"].index)
