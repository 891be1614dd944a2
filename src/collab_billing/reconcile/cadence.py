"""How long the reconciler waits between polls: the freshness policy (docs/reconciliation.md,
"Freshness and the read budget": its table of modes, and the budget).

A pure function of its inputs (signals, budget, now): the loop passes them in, tests too.
"""

from __future__ import annotations

from dataclasses import dataclass

from collab_billing.reconcile.budget import Budget

BACKOFF_SHARE = 0.1
# A verified delivery within this long counts as webhooks working (an idle account gets none).
WEBHOOK_RECENT_SECONDS = 3 * 86_400
# After a poll found events that webhooks missed, they are not trusted for this long: a
# delivery that fails now and then (an endpoint not subscribed to some event types, one that
# drops some) would otherwise put polling back to the safety net after every clean poll.
WEBHOOK_DISTRUST_SECONDS = 86_400


@dataclass(frozen=True)
class Signals:
    last_activity_at: float | None
    last_webhook_at: float | None
    # When a poll last found events that webhooks had not delivered.
    last_missed_at: float | None = None
    # When the next event that failed to apply is due for a retry (polls retry them).
    next_retry_at: float | None = None


@dataclass(frozen=True)
class Cadence:
    fast_seconds: float
    safety_seconds: float

    def healthy(self, signals: Signals, now: float) -> bool:
        seen, missed = signals.last_webhook_at, signals.last_missed_at
        recent = seen is not None and now - seen <= WEBHOOK_RECENT_SECONDS
        return recent and (missed is None or now - missed > WEBHOOK_DISTRUST_SECONDS)

    def mode(self, signals: Signals, budget: Budget, now: float) -> str:
        if budget.exhausted:
            return "over budget"
        return "safety net (webhooks healthy)" if self.healthy(signals, now) else "adaptive"

    def interval(self, signals: Signals, budget: Budget, now: float) -> float:
        """Seconds from one poll's start to the next."""
        ceiling = self.safety_seconds
        if budget.idle_share_spent:
            ceiling = max(ceiling, budget.idle_interval())
        if budget.exhausted:
            return max(ceiling, budget.over_budget_interval())
        if signals.next_retry_at is not None:  # a failed event is not left for the safety net
            ceiling = min(ceiling, max(self.fast_seconds, signals.next_retry_at - now))
        if self.healthy(signals, now) or signals.last_activity_at is None:
            return ceiling
        idle = max(0.0, now - signals.last_activity_at)
        return min(ceiling, max(self.fast_seconds, idle * BACKOFF_SHARE))
