"""The reconciler's tuning constants, in one place, each with why."""

# Events become visible in the list a little after their `created` second: each poll re-reads
# this much below the cursor to catch them (the ledger absorbs the repeats).
OVERLAP_SECONDS = 60
# Events a `created` window is sized to hold: 50 pages, so a window's last (partial) page adds
# about 2% to the requests, and a window in memory is ~12 MB of JSON.
WINDOW_EVENTS = 5_000
# The smallest window when several are read at once: 10 pages, so its partial last page adds
# at most 10% to the requests.
MIN_WINDOW_EVENTS = 1_000
# Events that the windows being read are sized for in all (~2.5 KB of JSON each: ~40 MB).
# The window being applied and the read tops of overflowed windows come on top of it.
MAX_EVENTS_IN_FLIGHT = 16_000
# A window that holds, or by its pages so far will hold, this many times its target is split
# (`windows.split`): cut from a wrong density, it would be read as one long chain of pages
# while the windows behind it wait for it to be applied.
MAX_WINDOW_FACTOR = 1.5
# Events a second the reconciler reads at most when its request budget allows more (a raised
# limit, or none): more than the database applies, so pages read faster would only wait in
# memory. It then reads in the smallest windows: requests are not what is scarce.
APPLY_EVENTS_PER_SECOND = 20_000
# Windows read at once against a far Stripe: requests in flight = request rate x round trip;
# 16 covers Stripe's live 100 requests/s at up to 160 ms.
MAX_WINDOWS_IN_FLIGHT = 16
# Events per transaction: large enough that per-transaction costs (commit, locks) are small,
# small enough that a webhook waiting for SQLite's write lock waits ~50 ms at most.
BATCH_EVENTS = 500
# ... and while other writers of the process (webhooks) have waited for SQLite's one writer
# in the last second: they then wait behind a transaction of 100 events, not 500.
CONTENDED_BATCH_EVENTS = 100
CONTENDED_SECONDS = 1.0
# Between batches the drain waits for the webhook deliveries being answered in its process
# (`serve`), at most this long, so that it still makes progress under a steady stream.
MAX_GIVE_WAY_SECONDS = 1.0
# The state documents a drain's batches marked stale are recomputed (and notified) when it
# starts and ends, and this often during a long one: a user is notified of the state a
# catch-up ends in, not of each state in between. Webhooks' changes are notified at once.
REFRESH_DOCUMENTS_SECONDS = 30.0
# A page request that failed (network, 5xx, 429) is made again this many times in all, after
# 0.5 s doubling: a window's earlier pages are not read again for it.
PAGE_ATTEMPTS = 6
PAGE_RETRY_SECONDS = 0.5
# Stripe keeps events for 30 days: a database whose last complete poll is older resyncs from
# the list endpoints (warning from 25 days on).
RETENTION_SECONDS = 30 * 86_400
WARN_AFTER_SECONDS = 25 * 86_400
# An event this old that a poll finds unprocessed was missed by webhooks (a delivery takes
# about a second; younger ones may still be on their way).
WEBHOOK_GRACE_SECONDS = 30
