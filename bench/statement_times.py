"""`python -m bench.statement_times OUT.json MODULE [ARGS...]`: run `python -m MODULE ARGS...`
with every SQL statement timed, then write the totals per statement to OUT.json.

A statement's time is the wall time of its cursor execution, from SQLAlchemy's
`before_cursor_execute` to `after_cursor_execute` events: the database's work, the driver's,
and the wait to get the GIL back after the driver let go of it, which is what the applying
thread pays. (py-spy shows where the CPU goes; this shows what each statement costs the
thread that waits for it.) Statements are keyed by their first 160 characters, whitespace
folded; the parameters are not recorded.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

KEY_CHARS = 160


class StatementTimes:
    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def install(self) -> None:
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, _cursor: Any, *_args: Any) -> None:
        conn.info.setdefault("statement_started", []).append(time.perf_counter())

    def _after(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seconds = time.perf_counter() - conn.info["statement_started"].pop()
        key = " ".join(statement.split())[:KEY_CHARS]
        self.count[key] += 1
        self.seconds[key] += seconds

    def report(self) -> list[dict[str, Any]]:
        """One row per statement, the costliest first."""
        rows = [
            {"statement": key, "count": self.count[key], "seconds": round(seconds, 4)}
            for key, seconds in self.seconds.items()
        ]
        return sorted(rows, key=lambda row: row["seconds"], reverse=True)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out, module, *args = argv
    times = StatementTimes()
    times.install()
    atexit.register(lambda: Path(out).write_text(json.dumps(times.report(), indent=1)))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
