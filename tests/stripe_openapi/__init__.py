"""Where the tests find Stripe's published OpenAPI spec (spec3.json) and example objects
(fixtures3.json).

The full files (8 MB) are not in the repository. They are used when present: at
`$STRIPE_OPENAPI_SPEC` (fixtures3.json beside it) or, when that is unset, at
`<repo>/../shared/stripe-openapi/`. Otherwise the tests use the trimmed copies committed here,
which `python -m tests.stripe_openapi.trim` makes from the full files (see trim.py); a test
checks that they are what it makes whenever the full files are present.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED_DIR = REPO.parent / "shared" / "stripe-openapi"
TRIMMED_SPEC = HERE / "spec3.trimmed.json"
TRIMMED_FIXTURES = HERE / "fixtures3.trimmed.json"


def full_spec_path() -> Path:
    """Where the full spec is looked for (it may not be there)."""
    return Path(os.environ.get("STRIPE_OPENAPI_SPEC") or SHARED_DIR / "spec3.json")


def full_fixtures_path() -> Path:
    return full_spec_path().with_name("fixtures3.json")


def spec_path() -> Path:
    """The full spec when present, else the committed trimmed copy."""
    full = full_spec_path()
    return full if full.is_file() else TRIMMED_SPEC


def fixtures_path() -> Path:
    """The full fixtures when present, else the committed trimmed copy."""
    full = full_fixtures_path()
    return full if full.is_file() else TRIMMED_FIXTURES
