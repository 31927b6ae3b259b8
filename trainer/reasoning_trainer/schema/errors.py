"""Validation problems as ``field.path: what is wrong and how to fix it`` lines."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import inner_model


@dataclass(frozen=True)
class Issue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RunValidationError(ValueError):
    """A run spec that must not reach the cluster; ``issues`` says every reason."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def issues_from_pydantic(error: ValidationError, root: type[BaseModel], prefix: str) -> list[Issue]:
    return [_issue(detail, root, prefix) for detail in error.errors(include_url=False)]


def _issue(detail: dict[str, Any], root: type[BaseModel], prefix: str) -> Issue:
    loc = [str(part) for part in detail["loc"]]
    path = ".".join([prefix, *loc]) if loc else prefix
    kind, ctx, given = detail["type"], detail.get("ctx", {}), _shown(detail.get("input"))
    if kind == "extra_forbidden":
        return Issue(path, _unknown_field(loc, root))
    if kind == "missing":
        return Issue(path, "required field is missing; add it")
    if kind == "value_error":
        return Issue(path, str(ctx.get("error", detail["msg"])))
    bounds = {"greater_than": "greater than", "greater_than_equal": "at least",
              "less_than": "less than", "less_than_equal": "at most"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return Issue(path, f"must be {bounds[kind]} {bound}, got {given!r}")
    if kind in ("int_type", "float_type") and isinstance(given, str):
        return Issue(path, f"must be a number, not the string {given!r}; write it without quotes")
    if kind == "bool_type" and isinstance(given, str):
        return Issue(path, f"must be true or false, not the string {given!r}")
    if kind == "literal_error":
        return Issue(path, f"must be one of {ctx['expected']}; got {given!r}")
    message = detail["msg"]
    message = message[0].lower() + message[1:]
    return Issue(path, f"{message}, got {given!r}" if not isinstance(given, (dict, list)) else message)


# Tokens users paste by mistake (Hugging Face, OpenAI-style, GitHub, GitLab, Slack) and long
# unbroken letter-and-digit runs: an error message never repeats them.
_SECRET = re.compile(r"(hf_|sk-|ghp_|gho_|github_pat_|glpat-|xox[abp]-)[A-Za-z0-9_-]{6,}|[A-Za-z0-9+/_=-]{32,}")


class _Hidden:
    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return f"'{self.value[:3]}...' (a secret-looking value, not shown)"


def _shown(given: Any) -> Any:
    """``given`` as a message may repeat it: a secret-looking string is masked."""
    if isinstance(given, str) and _SECRET.search(given):
        return _Hidden(given)
    return given


def _unknown_field(loc: list[str], root: type[BaseModel]) -> str:
    *parent, name = loc
    known = _field_aliases(_model_at(root, parent))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field '{name}'; did you mean '{close[0]}'?"
    return f"unknown field '{name}'; remove it (fields here: {', '.join(sorted(known))})"


def _model_at(model: type[BaseModel] | None, loc: list[str]) -> type[BaseModel] | None:
    """The schema class found by following ``loc`` (aliases and list indexes) from ``model``."""
    for part in loc:
        if model is None:
            return None
        if part.isdigit():
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        model = inner_model(field.annotation) if field else None
    return model


def _field_aliases(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]
