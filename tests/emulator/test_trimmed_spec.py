"""The trimmed copies of Stripe's spec3.json and fixtures3.json committed in tests/stripe_openapi
cover what the emulator serves and the tests read, and are what trim.py makes of the full files.
That last check needs the full files (`STRIPE_OPENAPI_SPEC`, or ../shared beside the clone): it
skips without them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.emulator.test_contract import SCHEMAS
from tests.stripe_openapi import (
    TRIMMED_FIXTURES,
    TRIMMED_SPEC,
    full_fixtures_path,
    full_spec_path,
    trim,
)

REGENERATE = "run `.venv/bin/python -m tests.stripe_openapi.trim` and commit its output"


def operations(paths: dict[str, Any], template: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = paths[trim.spec_template(paths, template)]
    except trim.TrimError:
        return {}
    return found


def first_difference(made: str, committed: str) -> str:
    """Where two renderings part (a diff of megabytes would take pytest minutes)."""
    pairs = zip(made.splitlines(), committed.splitlines(), strict=False)
    for number, (ours, theirs) in enumerate(pairs, start=1):
        if ours != theirs:
            return f"line {number}: trim makes {ours.strip()!r}, committed {theirs.strip()!r}"
    return f"lengths differ: trim makes {len(made)} characters, committed {len(committed)}"


def assert_same(made: str, committed: Path) -> None:
    text = committed.read_text(encoding="utf-8")
    same = made == text  # not `assert made == text`: see first_difference
    assert same, f"{committed.name} is out of date ({first_difference(made, text)}): {REGENERATE}"


def full_file(path: Path) -> Path:
    if not path.is_file():
        # An extra check: a clone of the repository alone has only the trimmed copy.
        pytest.skip(f"no full {path.name} at {path} (set STRIPE_OPENAPI_SPEC)")
    return path


def test_the_trimmed_spec_has_every_route_the_emulator_serves() -> None:
    paths = trim.load(TRIMMED_SPEC)["paths"]
    served = trim.served_routes()
    missing = [
        f"{method.upper()} {template}"
        for method, template in served
        if method not in operations(paths, template)
    ]
    assert ("get", "/v1/events") in served  # the routes did register
    assert missing == [], REGENERATE


def test_the_trimmed_spec_has_the_schemas_the_contract_test_names() -> None:
    schemas = trim.load(TRIMMED_SPEC)["components"]["schemas"]
    assert {*SCHEMAS.values(), "error"} <= schemas.keys(), REGENERATE


def test_trimming_the_trimmed_copies_changes_nothing() -> None:
    """So every `$ref` in the copy resolves within it, and nothing it needs is missing."""
    assert_same(trim.dumps(trim.trim_spec(trim.load(TRIMMED_SPEC))), TRIMMED_SPEC)
    assert_same(trim.dumps(trim.trim_fixtures(trim.load(TRIMMED_FIXTURES))), TRIMMED_FIXTURES)


def test_the_trimmed_spec_is_what_trim_makes_of_the_full_one() -> None:
    full = trim.load(full_file(full_spec_path()))
    assert_same(trim.dumps(trim.trim_spec(full)), TRIMMED_SPEC)


def test_the_trimmed_fixtures_are_what_trim_makes_of_the_full_ones() -> None:
    full = trim.load(full_file(full_fixtures_path()))
    assert_same(trim.dumps(trim.trim_fixtures(full)), TRIMMED_FIXTURES)
