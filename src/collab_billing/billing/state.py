"""`GET /billing/state`: the user's state document (see `collab_billing.state`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import unknown_user
from collab_billing.db.engine import read_only, transaction
from collab_billing.state.document import Document, StaleDocument, current_state
from collab_billing.state.outbox import write_changed_documents


def read_state(factory: sessionmaker[Session], github_user_id: int, now: datetime) -> Document:
    """`current_state` at `now`, or `NotFound` for an unknown user. A document a catch-up
    marked stale, or one a subscription's grace has ended since (`served_at`), is recomputed
    (stored and notified if it changed) and served from that transaction, which holds the
    user's `billing_states` row."""
    try:
        with read_only(factory) as session:
            document = current_state(session, github_user_id, now)
    except StaleDocument as stale:
        with transaction(factory) as session:
            write_changed_documents(session, [stale.user_id])
            document = current_state(session, github_user_id, now, recomputed=True)
    if document is None:
        raise unknown_user(github_user_id)
    return document
