"""The configuration reference (docs/configuration.md), generated from the run schema."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .base import inner_model
from .run import RunSpec

_BOUNDS = ((Gt, "> {}", "gt"), (Ge, ">= {}", "ge"), (Lt, "< {}", "lt"), (Le, "<= {}", "le"),
           (MinLen, "at least {} long", "min_length"), (MaxLen, "at most {} long", "max_length"))


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the run schema (`make docs`); every field of `spec` of a ReasoningTraining.",
        "A field left out takes the preset's value when `spec.preset` is set, else the default below.",
        "`kubectl explain reasoningtraining.spec` shows the same descriptions.",
        "",
        "| field | type | default | allowed | description |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{path}` | {kind} | {default} | {allowed} | {description} |"
              for path, kind, default, allowed, description in _rows(RunSpec, "spec")]
    return "\n".join(lines) + "\n"


def _rows(model: type[BaseModel], prefix: str):
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        child = inner_model(field.annotation)
        is_list = typing.get_origin(_strip_none(field.annotation)) is list
        yield (path, _type_name(field.annotation), _default(field), _allowed(field),
               (field.description or "").replace("|", "\\|"))
        if child is not None:
            yield from _rows(child, path + ("[]" if is_list else ""))


def _strip_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _type_name(annotation: Any) -> str:
    annotation = _strip_none(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "enum"
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "map"
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "any")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) or value in ({}, []) else f"`{_plain(value)}`"
    if field.default is PydanticUndefined:
        return "required"
    return "" if field.default is None else f"`{_plain(field.default)}`"


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(item) for item in value)
    if isinstance(value, BaseModel):
        return ""
    return repr(value).strip("'") if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def _allowed(field) -> str:
    annotation = _strip_none(field.annotation)
    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    if typing.get_origin(inner) is Literal:
        return ", ".join(f"`{value}`" for value in typing.get_args(inner))
    found = []
    for constraint in field.metadata:
        for kind, template, attribute in _BOUNDS:
            if isinstance(constraint, kind):
                found.append(template.format(getattr(constraint, attribute)))
    return "; ".join(found)


if __name__ == "__main__":
    print(render(), end="")
