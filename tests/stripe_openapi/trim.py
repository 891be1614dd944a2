"""Trim Stripe's published spec3.json and fixtures3.json to what the tests need.

    .venv/bin/python -m tests.stripe_openapi.trim [path/to/spec3.json]

reads the full spec (default: where the tests look for it, see __init__.py) and the
fixtures3.json beside it, and rewrites spec3.trimmed.json and fixtures3.trimmed.json in this
directory. The trimmed spec keeps the operations stripe_emulator serves (its `/v1` routes) and
every component schema they reach through `$ref`, without prose (`description`, `summary`).
The trimmed fixtures keep the example objects the tests read. Output is deterministic (sorted
keys), so a test can check that the committed copies are what this makes of the full files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stripe_emulator import app as _app  # noqa: F401  (importing it registers the /v1 routes)
from stripe_emulator.api import ROUTES
from tests.stripe_openapi import TRIMMED_FIXTURES, TRIMMED_SPEC, full_spec_path

Json = Any

# The example objects the tests read: the ones tests/test_stripe_objects.py decodes, and one
# holding an id of each kind stripe_emulator.ids mints (tests/emulator/test_ids.py).
FIXTURE_RESOURCES = (
    "billing_portal.configuration",
    "billing_portal.session",
    "checkout.session",
    "customer",
    "event",
    "invoice",
    "item",
    "price",
    "product",
    "subscription",
    "subscription_item",
    "webhook_endpoint",
)

_SCHEMA_REF = "#/components/schemas/"
_PROSE = frozenset({"description", "summary"})
# Keys whose value maps names to objects: a property (or media type...) may be called
# "description", and is no prose.
_NAME_MAPS = frozenset(
    {"properties", "encoding", "content", "responses", "schemas", "securitySchemes", "paths"}
)
# Keys whose value is data, not a schema: kept as is.
_DATA = frozenset({"enum", "default", "example", "required"})


class TrimError(Exception):
    """The full spec lacks something the emulator serves or the tests read."""


def served_routes() -> list[tuple[str, str]]:
    """The emulator's `/v1` routes as (lower-case method, template), sorted."""
    return sorted({(route.method.lower(), route.template) for route in ROUTES})


def _shape(template: str) -> tuple[str, ...]:
    # Parameter names differ (the emulator's `{id}`, the spec's `{customer}`); positions not.
    return tuple("{}" if part.startswith("{") else part for part in template.split("/"))


def spec_template(spec_paths: Json, template: str) -> str:
    """The spec's path template for one of the emulator's."""
    found: list[str] = [path for path in spec_paths if _shape(path) == _shape(template)]
    if len(found) != 1:
        raise TrimError(f"{template}: {len(found)} paths of that shape in the spec: {found}")
    return found[0]


def served_paths(spec_paths: Json) -> Json:
    """The spec's `paths`, with only the operations the emulator serves."""
    kept: dict[str, dict[str, Json]] = {}
    for method, template in served_routes():
        path = spec_template(spec_paths, template)
        operation = spec_paths[path].get(method)
        if operation is None:
            raise TrimError(f"{method.upper()} {template}: no such operation in the spec")
        kept.setdefault(path, {})[method] = operation
    return kept


def refs(node: Json) -> Iterator[str]:
    """The component schemas `node` refers to, at any depth."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(_SCHEMA_REF):
                raise TrimError(f"unexpected $ref {ref}")
            yield ref.removeprefix(_SCHEMA_REF)
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def reachable(schemas: Json, roots: Json) -> set[str]:
    """The names of the schemas `roots` reach through `$ref`, transitively."""
    seen: set[str] = set()
    todo = list(refs(roots))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(refs(schemas[name]))
    return seen


def strip_prose(node: Json, names: bool = False) -> Json:
    """`node` without prose keys; `names`: `node` maps names to objects."""
    if isinstance(node, list):
        return [strip_prose(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: strip_prose(value) for name, value in node.items()}
    return {
        key: value if key in _DATA else strip_prose(value, key in _NAME_MAPS)
        for key, value in node.items()
        if key not in _PROSE
    }


def _restore_response_descriptions(trimmed_paths: Json, spec_paths: Json) -> None:
    # OpenAPI requires a response's description (one short sentence each): keeping them
    # keeps the trimmed copy a valid OpenAPI document.
    for path, operations in trimmed_paths.items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                original = spec_paths[path][method]["responses"][status]
                if "description" in original:
                    response["description"] = original["description"]


def trim_spec(spec: Json) -> Json:
    paths = served_paths(spec["paths"])
    schemas = spec["components"]["schemas"]
    kept = {name: schemas[name] for name in reachable(schemas, paths)}
    trimmed = strip_prose(
        {**spec, "paths": paths, "components": {**spec["components"], "schemas": kept}}
    )
    _restore_response_descriptions(trimmed["paths"], spec["paths"])
    trimmed["info"]["x-trimmedBy"] = "tests/stripe_openapi/trim.py"
    return trimmed


def trim_fixtures(fixtures: Json) -> Json:
    resources = fixtures["resources"]
    missing = [name for name in FIXTURE_RESOURCES if name not in resources]
    if missing:
        raise TrimError(f"fixtures lack {missing}")
    return {"resources": {name: resources[name] for name in FIXTURE_RESOURCES}}


def dumps(document: Json) -> str:
    # One key a line: a new spec version's changes read as a diff.
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def load(path: Path) -> Json:
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, help="the full spec3.json")
    spec_file: Path = parser.parse_args(argv).spec or full_spec_path()
    fixtures_file = spec_file.with_name("fixtures3.json")
    for source in (spec_file, fixtures_file):
        if not source.is_file():
            parser.error(f"{source} not found (give the full spec3.json's path)")
    outputs = {
        TRIMMED_SPEC: dumps(trim_spec(load(spec_file))),
        TRIMMED_FIXTURES: dumps(trim_fixtures(load(fixtures_file))),
    }
    for target, text in outputs.items():
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
