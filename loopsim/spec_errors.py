"""One line for what is wrong with a spec: pydantic's errors, and TOML's, in a spec
author's words (``persona.nme: unknown field (did you mean name?)``).

Nothing of loopsim is imported here: :mod:`loopsim.schemas` passes its root model in.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

_POLICIES = ("fixed", "wall_clock", "per_checkin")


def describe_errors(errors: list[Any], root: type[BaseModel]) -> str:
    """The first error, and how many more there are. An unknown field comes first: a
    typo'd required key is also reported missing, and the typo is the one to fix."""
    ordered = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{describe(ordered[0], root, errors)}{more}"


def describe(error: Any, root: type[BaseModel], others: list[Any] | None = None) -> str:
    parts = [str(part) for part in error["loc"]]
    # The time policy's union puts its tag in the location; a spec says "time.anchor".
    if len(parts) > 2 and parts[0] == "time" and parts[1] in _POLICIES:
        del parts[1]
    loc, kind = ".".join(parts), error["type"]
    if kind == "missing":
        return f"{loc}: missing"
    if kind == "union_tag_invalid":
        tag, expected = error.get("ctx", {}).get("tag"), error.get("ctx", {}).get("expected_tags")
        return f"{loc}.policy: unknown drift policy {tag!r} (expected {expected})"
    if kind == "union_tag_not_found":
        return f"{loc}.policy: missing (expected 'fixed', 'wall_clock' or 'per_checkin')"
    if kind == "extra_forbidden" and len(parts) > 1 and parts[-1] in root.model_fields:
        hint = "in TOML, write it above the first [table] header"  # or it lands in that table
        return f"{loc}: unknown field ({parts[-1]} is a top-level key: {hint})"
    if kind == "extra_forbidden":
        import difflib  # here: every command imports this module, few print a typo

        known = _fields_at(root, parts[:-1]) | _missing_beside(parts, others or [])
        close = difflib.get_close_matches(parts[-1], sorted(known), n=1, cutoff=0.6)
        return f"{loc}: unknown field" + (f" (did you mean {close[0]}?)" if close else "")
    return f"{loc}: {error['msg'].lower()}"


def _fields_at(root: type[BaseModel], path: list[str]) -> set[str]:
    """The field names of the table at ``path`` (none known for a union, such as time)."""
    model: type[BaseModel] = root
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return set()
        model = annotation
    return set(model.model_fields)


def _missing_beside(parts: list[str], others: list[Any]) -> set[str]:
    """Fields reported missing in the same table: what a typo'd required key was."""
    table = parts[:-1]
    found: set[str] = set()
    for other in others:
        loc = [str(p) for p in other["loc"] if str(p) not in _POLICIES]
        if other["type"] == "missing" and loc[:-1] == table:
            found.add(loc[-1])
    return found


_AT_LINE = re.compile(r"at line (\d+)")
_TABLE = re.compile(r"^\s*\[+\s*([A-Za-z0-9_.-]+)\s*\]+")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def field_at(text: str, message: str) -> str:
    """``table.key: `` for the line a TOML error points at, so the user sees the field."""
    match = _AT_LINE.search(message)
    if not match:
        return ""
    lines = text.splitlines()
    number = int(match[1])
    if not 1 <= number <= len(lines):
        return ""
    key = _KEY.match(lines[number - 1])
    if not key:
        return ""
    table = next(
        (t[1] for line in reversed(lines[: number - 1]) if (t := _TABLE.match(line))), None
    )
    return f"{table}.{key[1]}: " if table else f"{key[1]}: "
