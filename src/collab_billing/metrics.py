"""Prometheus metrics (`GET /metrics`). Module-level: one set per process, as Prometheus expects."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_FETCHED = Counter(
    "collab_billing_events_fetched", "Events read from Stripe's Events API", ["type"]
)
EVENTS = Counter(
    "collab_billing_events",
    "Events handled, by outcome (applied, stale, duplicate, unmatched, failed, waiting, ignored)",
    ["outcome", "type"],
)
APPLY_SECONDS = Histogram(
    "collab_billing_apply_batch_seconds", "Time to apply one batch of events", ["source"]
)
POLL_SECONDS = Histogram("collab_billing_poll_seconds", "Duration of one complete poll")
STRIPE_REQUESTS = Counter(
    "collab_billing_stripe_requests",
    "Requests made to Stripe, by operation and status",
    ["operation", "status"],
)
WEBHOOK_DELIVERIES = Counter(
    "collab_billing_webhook_deliveries", "Webhook deliveries by outcome", ["outcome"]
)
WEBHOOK_DELIVERIES_IN_PROGRESS = Gauge(
    "collab_billing_webhook_deliveries_in_progress",
    "Webhook deliveries received and not yet answered",
    multiprocess_mode="livesum",
)
LEADER = Gauge(
    "collab_billing_reconciler_leader",
    "1 while this process is the active reconciler",
    multiprocess_mode="liveall",
)
RESYNCS = Counter(
    "collab_billing_resyncs",
    "Full resyncs from the list endpoints (reason: never_synced, events_expired)",
    ["reason"],
)
NOTIFICATIONS_PENDING = Gauge(
    "collab_billing_notifications_pending",
    "billing.state.updated notifications not yet delivered to every URL (nor expired)",
    multiprocess_mode="livemax",
)
NOTIFICATIONS_OLDEST_PENDING_AGE = Gauge(
    "collab_billing_notifications_oldest_pending_age_seconds",
    "Age of the oldest notification not yet delivered (0: none pending)",
    multiprocess_mode="livemax",
)
NOTIFICATION_DELIVERIES = Counter(
    "collab_billing_notification_deliveries",
    "Notification POSTs by outcome (delivered, failed: retried later, expired: given up)",
    ["outcome"],
)
NOTIFY_DELIVERY_SECONDS = Histogram(
    "collab_billing_notification_delay_seconds",
    "From the notification's commit to its delivery to every URL",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600, 86400),
)
NOTIFIER_LEADER = Gauge(
    "collab_billing_notifier_leader",
    "1 while this process is the notification sender",
    multiprocess_mode="livemax",
)

USAGE_RECORDS = Gauge(
    "collab_billing_usage_records",
    "Usage records in the outbox, by status (pending, sent, failed)",
    ["status"],
    multiprocess_mode="livemax",
)
USAGE_OLDEST_PENDING = Gauge(
    "collab_billing_usage_oldest_pending_age_seconds",
    "Age of the oldest usage record not yet sent to Stripe (0: none)",
    multiprocess_mode="livemax",
)
USAGE_SENT = Counter(
    "collab_billing_usage_sent",
    "Usage records sent to Stripe as meter events, by outcome",
    ["outcome"],
)


API_STRIPE_CALLS_IN_PROGRESS = Gauge(
    "collab_billing_api_stripe_calls_in_progress",
    "Admin API requests running their Stripe calls (at most API_STRIPE_CONCURRENCY)",
    multiprocess_mode="livesum",
)
API_STRIPE_CALLS_REFUSED = Counter(
    "collab_billing_api_stripe_calls_refused",
    "Admin API requests answered 503 because every Stripe slot stayed taken",
)
DATABASE_UNAVAILABLE = Counter(
    "collab_billing_api_database_unavailable",
    "Admin API requests answered 503 because the database failed or could not be reached",
)


def observe_stripe_request(operation: str, status: int | str) -> None:
    STRIPE_REQUESTS.labels(operation, str(status)).inc()


def record_outcomes(outcomes: dict[tuple[str, str], int]) -> None:
    for (outcome, event_type), count in outcomes.items():
        EVENTS.labels(outcome, event_type).inc(count)


# The reconciler's state (lag, pending events, the read budget) is read from the database
# at each scrape: `reconcile/gauges.py`.
POLL_INTERVAL = Gauge(
    "collab_billing_poll_interval_seconds",
    "The reconciler's current wait between polls (the leader's; 0 where none leads)",
    multiprocess_mode="livemax",
)
