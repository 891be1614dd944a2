"""`python -m bench.packed_rows`: 2,000 rows read from SQLite one by one, as the driver steps
to them, or packed into one JSON row (`ledger.ListStatement.select`), with and without another
thread running Python meanwhile.

The driver lets go of the GIL at every row it steps to, and must take it back for the next:
while another thread runs Python (a drain's read-ahead thread decoding pages), each row waits
for that thread to let go. A lookup packed into one row waits once. Prints ms per lookup.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from collab_billing.db.ledger import ListStatement

SUBSCRIPTIONS = 100_000
LOOKUPS = 50
IDS_PER_LOOKUP = 2_000
# The service's statements on SQLite, as `ListStatement.of` and `.select` write them.
BY_ROW = ListStatement.of("SELECT sid, as_of FROM s WHERE {key_in_values}", "sid").sqlite.text
PACKED = ListStatement.select("sid, as_of", "s", "sid").sqlite.text


def busy_in_bursts(stop: threading.Event) -> None:
    """1 ms of Python, then 1 ms of waiting (as for the next page), until stopped."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < 0.001:
            pass
        time.sleep(0.001)


def ms_per_lookup(read: Callable[[str], Sequence[Sequence[object]]], lookups: list[str]) -> float:
    started = time.perf_counter()
    for ids in lookups:
        read(ids)
    return (time.perf_counter() - started) * 1000 / len(lookups)


def main(lookup_count: int = LOOKUPS) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "rows.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, sid TEXT UNIQUE, as_of INTEGER)")
        rows = [(f"sub_{n:08d}", n) for n in range(SUBSCRIPTIONS)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO s (sid, as_of) VALUES (?, ?)", rows)
        db.execute("COMMIT")
        rng = random.Random(1)
        lookups = [
            orjson.dumps(
                [rows[rng.randrange(SUBSCRIPTIONS)][0] for _ in range(IDS_PER_LOOKUP)]
            ).decode()
            for _ in range(lookup_count)
        ]

        def by_row(ids: str) -> list[tuple[object, ...]]:
            return db.execute(BY_ROW, {"values": ids}).fetchall()

        def packed(ids: str) -> list[list[object]]:  # as `ListStatement.rows` gives them
            found: list[list[object]] = orjson.loads(
                db.execute(PACKED, {"values": ids}).fetchone()[0]
            )
            return found

        assert sorted(map(tuple, packed(lookups[0]))) == sorted(by_row(lookups[0]))
        for contended in (False, True):
            stop = threading.Event()
            other = threading.Thread(target=busy_in_bursts, args=(stop,))
            if contended:
                other.start()
            for read in (by_row, packed, by_row, packed):
                figure = ms_per_lookup(read, lookups)
                who = "beside a thread running Python" if contended else "alone"
                print(f"{read.__name__:<7} {who:<31} {figure:6.2f} ms per {IDS_PER_LOOKUP:,} ids")
            stop.set()
            if contended:
                other.join()


if __name__ == "__main__":
    main()
