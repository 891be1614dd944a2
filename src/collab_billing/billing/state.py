"""`GET /billing/state`: the user's state document (see `collab_billing.state`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import unknown_user
from collab_billing.db.engine import read_only
from collab_billing.state.document import Document, current_state


def read_state(factory: sessionmaker[Session], github_user_id: int, now: datetime) -> Document:
    """`current_state` at `now`, or `NotFound` for an unknown user."""
    with read_only(factory) as session:
        document = current_state(session, github_user_id, now)
    if document is None:
        raise unknown_user(github_user_id)
    return document
