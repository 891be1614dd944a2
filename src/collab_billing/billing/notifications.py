"""The outbox for operators: `collab-billing notifications list|replay`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.engine import read_only, transaction
from collab_billing.db.models import BillingNotification, User

_N = BillingNotification


class Listed(NamedTuple):
    id: int
    github_user_id: int
    version: int
    status: str  # delivered, pending, expired
    attempts: int
    created_at: datetime
    last_error: str | None


def listing(
    factory: sessionmaker[Session], github_user_id: int | None, pending: bool, limit: int
) -> list[Listed]:
    """The newest notifications first."""
    statement = (
        select(
            _N.id,
            User.github_user_id,
            _N.version,
            _N.delivered_at,
            _N.expired_at,
            _N.attempts,
            _N.created_at,
            _N.last_error,
        )
        .join(User, User.id == _N.user_id)
        .order_by(_N.id.desc())
        .limit(limit)
    )
    if github_user_id is not None:
        statement = statement.where(User.github_user_id == github_user_id)
    if pending:
        statement = statement.where(_N.delivered_at.is_(None), _N.expired_at.is_(None))
    with read_only(factory) as session:
        rows = session.execute(statement).all()
    return [
        Listed(
            nid,
            gid,
            version,
            "delivered" if delivered else "expired" if expired else "pending",
            attempts,
            created,
            error,
        )
        for nid, gid, version, delivered, expired, attempts, created, error in rows
    ]


def replay(
    factory: sessionmaker[Session],
    notification_ids: Sequence[int],
    github_user_id: int | None,
    expired: bool,
) -> int:
    """Queue the notifications that match every filter given for delivery again, to every
    URL, with a new retry window; returns how many. A replayed row is sent in its place in the
    user's order (by id), after the retries reset."""
    conditions = []
    if notification_ids:
        conditions.append(_N.id.in_(notification_ids))
    if github_user_id is not None:
        users = select(User.id).where(User.github_user_id == github_user_id)
        conditions.append(_N.user_id.in_(users.scalar_subquery()))
    if expired:
        conditions.append(_N.expired_at.is_not(None))
    with transaction(factory) as session:
        result = session.execute(
            update(_N)
            .where(and_(*conditions))
            .values(
                delivered_at=None,
                expired_at=None,
                replayed_at=datetime.now(UTC),
                delivered_to=[],
                attempts=0,
                next_attempt_at=0.0,
                last_error=None,
            )
            .execution_options(synchronize_session=False)
        )
    return int(getattr(result, "rowcount", 0) or 0)
