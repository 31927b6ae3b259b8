"""Conventions shared by every part of the run schema.

Resources follow Kubernetes API conventions: camelCase keys, unknown keys rejected
(a typo must never be silently ignored, as the API server would prune it).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel

# Kubernetes' quantity suffixes: binary (Ki ... Ei), decimal (k, M ... E; a capital K is no unit
# there) and milli (m: CPU). A size in bytes takes the first two.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_CPU = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m)?$")
_UNIT_BYTES = {
    None: 1,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


class SpecModel(BaseModel):
    """Base of every schema object: camelCase in YAML, snake_case in Python."""

    model_config = ConfigDict(
        extra="forbid",
        # As strict as the API server: "3" is no number and "yes" no boolean (the CRD refuses them too).
        strict=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        use_enum_values=True,
    )


def quantity_bytes(value: str) -> float:
    """Bytes in a Kubernetes quantity such as ``24Gi`` or ``80G``."""
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a memory quantity; write it like 24Gi, 80Gi, 40G or 512k")
    number, unit = match.groups()
    return float(number) * _UNIT_BYTES[unit]


def quantity_gib(value: str) -> float:
    return quantity_bytes(value) / 2**30


def _check_quantity(value: str) -> str:
    quantity_bytes(value)
    return value


Quantity = Annotated[str, AfterValidator(_check_quantity),
                     WithJsonSchema({"type": "string", "pattern": _QUANTITY.pattern})]

def cpu_cores(value: str) -> float:
    """Cores in a Kubernetes CPU quantity such as ``4``, ``1.5`` or ``500m``."""
    match = _CPU.match(value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a CPU quantity; write cores like 4 or 1.5, or millicores like 500m")
    number, milli = match.groups()
    return float(number) / (1000 if milli else 1)


def _check_cpu(value: str) -> str:
    cpu_cores(value)
    return value


CpuQuantity = Annotated[str, AfterValidator(_check_cpu), WithJsonSchema({"type": "string", "pattern": _CPU.pattern})]

_PARAMETERS = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([MB])$")


def parameter_count(value: str) -> int:
    """Parameters in a size such as ``1.5B`` or ``500M``."""
    match = _PARAMETERS.match(value.strip())
    if not match:
        raise ValueError(f"'{value}' is not a parameter count; write it like 1.5B or 500M")
    number, unit = match.groups()
    return int(float(number) * (1e9 if unit == "B" else 1e6))


def _check_parameters(value: str) -> str:
    parameter_count(value)
    return value


ParameterCount = Annotated[str, AfterValidator(_check_parameters),
                           WithJsonSchema({"type": "string", "pattern": _PARAMETERS.pattern})]


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The schema class inside an annotation such as ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = inner_model(arg)
        if found:
            return found
    return None
