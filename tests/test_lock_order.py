"""Writers of mirrored objects lock them in one order per transaction: a sync's objects read
from Stripe (`Applier.apply_read`, several types) and a webhook's batch of the same objects
never deadlock (PostgreSQL advisory locks; SQLite serialises writers anyway)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.engine import transaction
from collab_billing.mirror.invoices import INVOICES
from collab_billing.mirror.subscriptions import SUBSCRIPTIONS
from collab_billing.reconcile import batch, ledger
from collab_billing.reconcile.apply import Applier


def _hash(factory: sessionmaker[Session], value: str) -> int:
    with factory() as session:
        return int(session.scalar(text("SELECT hashtext(:v)"), {"v": value}))


@pytest.mark.postgres_only
def test_a_sync_and_a_webhook_batch_of_the_same_objects_do_not_deadlock(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An invoice that a batch locks before the subscription (locks go by hash order).
    sub_id = "sub_lockorder"
    inv_id = next(
        f"in_lockorder{n}" for n in range(1000)
        if _hash(session_factory, f"in_lockorder{n}") < _hash(session_factory, sub_id)
    )  # fmt: skip
    first_type_written, batch_waiting = threading.Event(), threading.Event()
    real_write_read = batch.BatchWriter.write_read

    def write_read(self: Any, mirrored: Any, chunk: Any, *rest: Any) -> int:
        written = real_write_read(self, mirrored, chunk, *rest)
        if mirrored is SUBSCRIPTIONS:  # the sync holds what it has locked so far
            first_type_written.set()
            batch_waiting.wait(10)
        return written

    monkeypatch.setattr(batch.BatchWriter, "write_read", write_read)
    errors: list[BaseException] = []

    def webhook_batch() -> None:
        first_type_written.wait(10)
        try:
            with transaction(session_factory) as session:
                # What a batch of this customer's events does first: every object, one call.
                timer = threading.Timer(1.0, batch_waiting.set)  # it waits on the sync
                timer.start()
                ledger.lock_objects(session, [inv_id, sub_id])
        except BaseException as error:
            errors.append(error)
        finally:
            batch_waiting.set()

    other = threading.Thread(target=webhook_batch)
    other.start()
    try:
        sub = SimpleNamespace(id=sub_id, customer="cus_lockorder")
        inv = SimpleNamespace(id=inv_id, customer="cus_lockorder")
        Applier(session_factory, None).apply_read([(SUBSCRIPTIONS, [sub]), (INVOICES, [inv])], 1)
    except BaseException as error:
        errors.append(error)
    finally:
        other.join(30)
    assert not errors, errors
