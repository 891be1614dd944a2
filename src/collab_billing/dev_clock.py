"""The clock of a database `dev` made: its emulator's.

`dev` judges access by its emulator's clock, which `/_emulator/clock/advance` moves ahead of
this machine's. A command run beside it on its database (`resync`, `reconcile`) judges the
state documents it writes by that clock too: by the system's, it would store and notify a
grace that the emulator's time has ended (then `dev`'s sweep a `blocked` again).
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import Engine, select

from collab_billing.config import Settings
from collab_billing.db.models import ReconcilerState
from collab_billing.state.access import Clock, system_clock

# Set in the databases `dev` runs on: their data is of an emulator, gone with its process.
MADE_BY_DEV = "made_by_dev"


def made_by_dev(engine: Engine) -> bool:
    with engine.connect() as connection:
        marked = connection.scalar(
            select(ReconcilerState.value).where(ReconcilerState.name == MADE_BY_DEV)
        )
    return marked is not None


def access_clock(settings: Settings, engine: Engine) -> Clock:
    """The emulator's clock (`STRIPE_API_BASE`'s) for a database `dev` made; else the
    system's."""
    if not made_by_dev(engine):
        return system_clock
    url = f"{settings.stripe_api_base.rstrip('/')}/_emulator/clock"

    def emulator_now() -> datetime:
        # Asked each time (a local request, on dev's small data): its clock moves meanwhile.
        answer = httpx.get(url, timeout=10)
        answer.raise_for_status()
        return datetime.fromtimestamp(answer.json()["now"], UTC)

    return emulator_now
