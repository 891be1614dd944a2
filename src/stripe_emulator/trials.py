"""Trials: moving a trial's end, and `customer.subscription.trial_will_end`, the warning
Stripe sends three days before a trial ends (and when it is ended at once with `trial_end=now`).
A trial's end is the subscription's billing cycle anchor: the paid periods are counted from it.
"""

from __future__ import annotations

from stripe_emulator.errors import bad_request
from stripe_emulator.records import DAY, Subscription, evolve
from stripe_emulator.store import Store


def move_trial_end(sub: Subscription, trial_end: int, now: int) -> Subscription:
    """A trial extended or shortened: its period ends with it. The emulator does not start a
    trial on a subscription that is not in one (Stripe does, with prorations)."""
    if sub.status != "trialing":
        raise bad_request(
            "The emulator changes `trial_end` only of a subscription in a trial.", "trial_end"
        )
    if trial_end <= now:
        raise bad_request(
            "Invalid timestamp: must be an integer Unix timestamp in the future.", "trial_end"
        )
    return evolve(
        sub,
        trial_end=trial_end,
        current_period_end=trial_end,
        billing_cycle_anchor=trial_end,  # the paid periods start when the trial ends
        trial_warned_at=None,
    )


# Stripe warns of a trial's end this long before it (`customer.subscription.trial_will_end`).
TRIAL_WARNING = 3 * DAY


def warn_trial_end(store: Store, sub: Subscription, at: int) -> Subscription:
    """`customer.subscription.trial_will_end`, once per trial end (no `previous_attributes`:
    nothing changed)."""
    warned = evolve(sub, trial_warned_at=at)
    store.subscriptions.put(sub.id, warned)
    store.emit("customer.subscription.trial_will_end", warned, created=at)
    return warned


def trial_warning_due(sub: Subscription) -> int | None:
    """When the trial's end is to be announced (None: not in a trial, announced already, or a
    trial of three days or less, which Stripe announces at no set time: not modelled)."""
    if sub.status != "trialing" or sub.trial_end is None or sub.trial_warned_at is not None:
        return None
    due = sub.trial_end - TRIAL_WARNING
    return due if sub.trial_start is not None and due > sub.trial_start else None
