"""Declarative checks of configuration values: a JSON Schema subset, one error line naming the key.

Theory of operation: each component states the types and ranges of its YAML keys as a JSON Schema
document (plain dicts, Draft 2020-12 keywords), and `check(data, schema, source)` walks the data
against it, raising `ConfigError("SOURCE: dotted.key: what is wrong, got VALUE")` at the first bad
value. Only the keywords below are understood; that subset is enough for configuration files, keeps
`jsonschema` (and its half-second import) out of every process start, and the tests check each
schema and this walker's verdicts against the `jsonschema` package itself.

Keywords: type (one or a list), properties, additionalProperties (false or a schema), items,
required, enum, minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, minItems, pattern.
Numbers are never booleans, and NaN or infinity is not a number here (YAML's `.inf` is rejected).
Unknown keys are left to `additionalProperties` (components that already word their own "unknown
key" message omit it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from celltap.config import ConfigError

Schema = dict[str, Any]

_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty (null)",
}


def _is(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "integer":  # strictly an int: 5.0 would reach range() and friends as a float
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _range_words(schema: Schema) -> str:
    parts = []
    if "minimum" in schema:
        parts.append(f">= {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        parts.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        parts.append(f"<= {schema['maximum']}")
    if "exclusiveMaximum" in schema:
        parts.append(f"< {schema['exclusiveMaximum']}")
    return " and ".join(parts)


def problems(value: Any, schema: Schema, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (dotted key, what is wrong) for every violation, parents before children."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            words = " or ".join(_TYPE_WORDS[k] for k in kinds)
            yield path, f"must be {words}, got {value!r}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield path, f"must be one of {', '.join(map(str, schema['enum']))}, got {value!r}"
        return
    if _is(value, "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if (
            (lo is not None and value < lo)
            or (hi is not None and value > hi)
            or (xlo is not None and value <= xlo)
            or (xhi is not None and value >= xhi)
        ):
            whole = "integer" in (kinds or ()) and "number" not in (kinds or ())
            kind = "an integer" if whole else "a number"
            yield path, f"must be {kind} {_range_words(schema)}, got {value!r}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield path, "must not be empty" if schema["minLength"] == 1 else f"is too short: {value!r}"
        pattern = schema.get("pattern")
        if pattern is not None and not re.search(pattern, value):
            yield path, f"{value!r} is not of the form {schema.get('description', pattern)}"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield path, f"needs at least {schema['minItems']} item(s)"
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                yield from problems(item, items, _join(path, i))
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                yield _join(path, key), "is required"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = props.get(key)
            if sub is not None:
                yield from problems(item, sub, _join(path, key))
            elif extra is False:
                known = ", ".join(sorted(props))
                yield _join(path, str(key)), f"unknown key (known: {known})"
            elif isinstance(extra, dict):
                yield from problems(item, extra, _join(path, str(key)))


def check(
    data: Any, schema: Schema, source: str = "", error: type[Exception] = ConfigError, path: str = ""
) -> None:
    """Raise `error` with one line naming the first bad key of `data` (keys under `path`), if any."""
    for key, what in problems(data, schema, path):
        where = ": ".join(p for p in (source, key or "(top level)") if p)
        raise error(f"{where}: {what}")


def out_of_range(schema: Schema, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(key path, value) pairs just outside every stated range (for tests that walk a schema)."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else (kinds or [])
    if "integer" in kinds or "number" in kinds:
        step = 1 if "number" not in kinds else 0.5
        if "minimum" in schema:
            yield path, schema["minimum"] - step
        if "exclusiveMinimum" in schema:
            yield path, schema["exclusiveMinimum"]
        if "maximum" in schema:
            yield path, schema["maximum"] + step
        if "exclusiveMaximum" in schema:
            yield path, schema["exclusiveMaximum"]
    if "enum" in schema:
        yield path, "no-such-choice"
    for key, sub in schema.get("properties", {}).items():
        yield from out_of_range(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        yield from out_of_range(schema["items"], (*path, 0))
