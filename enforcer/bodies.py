"""Strict, typed parsing of JSON request bodies and query strings (pure).

Each route declares a :class:`Schema` (its fields, their types and limits);
:func:`parse_body` and :func:`parse_query` accept exactly that and raise
:class:`~enforcer.errors.BadRequest` (or :class:`PayloadTooLarge`) for
anything else: malformed JSON, a non-object, unknown fields, missing required
fields, wrong types, overlong strings, out-of-range numbers. The same schemas
produce the OpenAPI documents (:func:`json_schema`), so the description and the
check cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from enforcer.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "Field",
    "Schema",
    "check_identity_encoding",
    "json_schema",
    "parse_body",
    "parse_query",
]

Kind = Literal["str", "int", "number", "bool", "str_list"]


@dataclass(frozen=True, slots=True)
class Field:
    """One field: its kind, whether it is required, and its limits."""

    kind: Kind
    required: bool = True
    max_len: int = 4096
    min_len: int = 0
    minimum: float | None = None
    maximum: float | None = None
    max_items: int = 32
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Schema:
    """A JSON object with exactly these fields (unknown fields are refused)."""

    fields: Mapping[str, Field] = field(default_factory=dict)
    description: str = ""


def _check_str(name: str, value: object, spec: Field) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL")
    if len(value) > spec.max_len:
        raise BadRequest(f"{name} longer than {spec.max_len} characters")
    if len(value) < spec.min_len:
        raise BadRequest(f"{name} shorter than {spec.min_len} characters")
    if spec.enum is not None and value not in spec.enum:
        raise BadRequest(f"{name} must be one of {', '.join(spec.enum)}")
    if spec.pattern is not None:
        import re

        if re.fullmatch(spec.pattern, value) is None:
            raise BadRequest(f"{name} does not match {spec.pattern}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"{name} is not valid UTF-8") from e
    return value


def _check_number(name: str, value: object, spec: Field, *, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be {'an integer' if integer else 'a number'}")
    if integer and not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{name} must be finite")
    if spec.minimum is not None and value < spec.minimum:
        raise BadRequest(f"{name} must be >= {spec.minimum:g}")
    if spec.maximum is not None and value > spec.maximum:
        raise BadRequest(f"{name} must be <= {spec.maximum:g}")
    return value


def _check(name: str, value: object, spec: Field) -> Any:
    if spec.kind == "str":
        return _check_str(name, value, spec)
    if spec.kind == "int":
        return _check_number(name, value, spec, integer=True)
    if spec.kind == "number":
        return _check_number(name, value, spec, integer=False)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be a boolean")
        return value
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of strings")
    if len(value) > spec.max_items:
        raise BadRequest(f"{name} has more than {spec.max_items} items")
    return [_check_str(f"{name}[{i}]", item, spec) for i, item in enumerate(value)]


def _check_object(data: object, schema: Schema) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - set(schema.fields))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)[:200]}")
    out: dict[str, Any] = {}
    for name, spec in schema.fields.items():
        if name not in data:
            if spec.required:
                raise BadRequest(f"missing field: {name}")
            continue
        out[name] = _check(name, data[name], spec)
    return out


def _no_constants(token: str) -> Any:
    raise BadRequest(f"invalid JSON number {token}")


def check_identity_encoding(content_encoding: str | None) -> None:
    """Refuse a request body sent with a ``Content-Encoding`` (:class:`UnsupportedMediaType`).

    The daemons read bodies as sent (their servers inflate nothing): a body
    the client compressed is not the JSON or file it claims to be, so it is
    refused by name rather than parsed as garbage or stored as is.
    """
    if content_encoding is not None and content_encoding.strip().lower() not in {"", "identity"}:
        raise UnsupportedMediaType(
            f"request bodies are taken as sent: Content-Encoding {content_encoding[:40]!r} "
            "is not supported"
        )


def parse_body(raw: bytes, schema: Schema, *, max_bytes: int) -> dict[str, Any]:
    """Decode ``raw`` as a JSON object matching ``schema`` exactly."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"body larger than {max_bytes} bytes")
    if not raw.strip() and not any(f.required for f in schema.fields.values()):
        return {}
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadRequest("the body is not valid JSON (UTF-8)") from e
    return _check_object(data, schema)


def parse_query(query: Mapping[str, str], schema: Schema) -> dict[str, Any]:
    """Check a query string against ``schema`` (ints/numbers/bools converted)."""
    # items(), not keys(): a multidict's keys() folds repeated keys into one.
    pairs = list(query.items())
    if len(pairs) != len({key for key, _ in pairs}):
        raise BadRequest("repeated query parameter")
    data: dict[str, object] = {}
    for key, text in pairs:
        spec = schema.fields.get(key)
        if spec is None or spec.kind == "str":
            data[key] = text
            continue
        try:
            if spec.kind == "int":
                data[key] = int(text, 10)
            elif spec.kind == "number":
                data[key] = float(text)
            elif spec.kind == "bool":
                if text not in {"true", "false"}:
                    raise ValueError(text)
                data[key] = text == "true"
            else:
                data[key] = text.split(",")
        except ValueError as e:
            raise BadRequest(f"query parameter {key} has the wrong type") from e
    return _check_object(data, schema)


def _field_schema(spec: Field) -> dict[str, Any]:
    if spec.kind == "str":
        out: dict[str, Any] = {"type": "string", "maxLength": spec.max_len}
        if spec.min_len:
            out["minLength"] = spec.min_len
        if spec.enum is not None:
            out["enum"] = list(spec.enum)
        # Strings never carry NUL (refused by _check_str): say so in the schema.
        out["pattern"] = f"^(?:{spec.pattern})$" if spec.pattern is not None else r"^[^\u0000]*$"
    elif spec.kind in {"int", "number"}:
        out = {"type": "integer" if spec.kind == "int" else "number"}
        if spec.minimum is not None:
            out["minimum"] = spec.minimum
        if spec.maximum is not None:
            out["maximum"] = spec.maximum
    elif spec.kind == "bool":
        out = {"type": "boolean"}
    else:
        out = {
            "type": "array",
            "maxItems": spec.max_items,
            "items": {"type": "string", "maxLength": spec.max_len, "pattern": r"^[^\u0000]*$"},
        }
    if spec.description:
        out["description"] = spec.description
    return out


def json_schema(schema: Schema) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3 flavour) of a body schema."""
    out: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: _field_schema(spec) for name, spec in schema.fields.items()},
    }
    required = [name for name, spec in schema.fields.items() if spec.required]
    if required:
        out["required"] = required
    if schema.description:
        out["description"] = schema.description
    return out
