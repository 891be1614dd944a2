"""Stripe's OpenAPI 3.0 schemas (spec3.json, or its trimmed copy: see tests/stripe_openapi) as
JSON Schema validators.

Conversion rules:
- `$ref: #/components/schemas/X` is kept: every validator's root document carries the
  converted `components`, so references resolve inside it.
- `nullable: true` becomes "or null": `anyOf` gains `{"type": "null"}` (Stripe wraps nullable
  references and expandable fields in a one-element `anyOf`); a plain `type` becomes
  `[type, "null"]` and an `enum` gains `null`.
- Expandable fields are `anyOf: [string, <object>]` in the spec; they validate as is (an id or
  the expanded object). The `x-expandableFields` / `x-expansionResources` annotations are
  dropped.
- Strictness: an object schema with `properties` but no `additionalProperties` gets
  `additionalProperties: false`, so a field that Stripe's schema does not define is a violation.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tests.stripe_openapi import spec_path

_DROP = {"description", "title", "x-expandableFields", "x-expansionResources", "nullable",
         "x-stripeBypassValidation", "x-stripeMostCommon", "x-stripeResource",
         "x-stripeOperations", "x-resourceId", "x-stripeParam", "format"}  # fmt: skip


def convert(node: Any) -> Any:
    """Convert one OpenAPI schema object (recursively) to JSON Schema."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":  # a map of names (which may be "description"!) to schemas
            out[key] = {name: convert(schema) for name, schema in value.items()}
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [convert(schema) for schema in value]
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = convert(value)
        else:
            out[key] = value
    if "properties" in out and out.get("type", "object") == "object":
        out.setdefault("additionalProperties", False)
    if node.get("nullable"):
        out = _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    result = dict(schema)
    if "type" in result:
        kinds = result["type"] if isinstance(result["type"], list) else [result["type"]]
        result["type"] = [*kinds, "null"]
    if "enum" in result:
        result["enum"] = [*result["enum"], None]
    return result


class Spec:
    def __init__(self, path: Path) -> None:
        raw = json.loads(path.read_text())
        self.version = raw["info"]["version"]
        schemas = raw["components"]["schemas"]
        self.components = {"schemas": {name: convert(schema) for name, schema in schemas.items()}}
        self.paths: dict[str, Any] = raw["paths"]
        self._templates = sorted(
            ((template, _template_regex(template)) for template in self.paths),
            key=lambda item: item[0].count("{"),
        )
        self._validators: dict[str, Draft202012Validator] = {}

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            root = {**convert(schema), "components": self.components}
            self._validators[key] = Draft202012Validator(root)
        return self._validators[key]

    def object_validator(self, name: str) -> Draft202012Validator:
        return self.validator({"$ref": f"#/components/schemas/{name}"})

    def template_for(self, path: str) -> str | None:
        for template, regex in self._templates:  # literal paths first
            if regex.match(path):
                return template
        return None

    def response_schema(self, method: str, path: str, status: int) -> dict[str, Any] | None:
        template = self.template_for(path)
        if template is None:
            return None
        operation = self.paths[template].get(method.lower())
        if operation is None:
            return None
        responses = operation["responses"]
        response = responses.get(str(status)) or responses.get("default")
        if response is None:
            return None
        schema: dict[str, Any] = response["content"]["application/json"]["schema"]
        return schema

    def errors(self, validator: Draft202012Validator, instance: Any) -> list[str]:
        return [_describe(error) for error in validator.iter_errors(instance)]


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$")


def _describe(error: ValidationError) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "<root>"
    best = error
    if error.context:
        best = min(error.context, key=lambda sub: len(list(sub.absolute_path)) * -1)
    return f"{where}: {best.message[:300]}"


@cache
def load_spec() -> Spec:
    """The full spec when present, else the committed trimmed copy."""
    return Spec(spec_path())
