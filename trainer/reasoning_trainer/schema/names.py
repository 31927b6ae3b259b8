"""Kubernetes' formats for names, label keys and label values, checked before the API server sees them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def dns_label_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 label (a run's or a namespace's name), or None."""
    if len(value) > 63:
        return f"at most 63 characters, got {len(value)}"
    if not _DNS_LABEL.match(value):
        return (f"{value!r} is not a valid name: lowercase letters, digits and '-', starting and ending "
                f"with a letter or digit")
    return None


def _object_name(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes object name: lowercase letters, digits, '-' and '.', "
                         f"starting and ending with a letter or digit, at most 253 characters")
    return value


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"key {key!r}: the prefix before '/' must be a DNS subdomain such as example.com"
    if not name or len(name) > 63 or not _QUALIFIED.match(name):
        return (f"key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending "
                f"with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or (value and not _QUALIFIED.match(value)):
        return (f"{value!r} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and "
                f"ending with a letter or digit (or empty)")
    return None


def _label_key(key: str) -> str:
    problem = label_key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


def _label_value(value: str) -> str:
    problem = label_value_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _namespace(value: str) -> str:
    problem = dns_label_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _labels(values: dict[str, str]) -> dict[str, str]:
    for key, value in values.items():
        _label_key(key)
        problem = label_value_problem(value)
        if problem:
            raise ValueError(f"value of {key!r}: {problem}")
    return values


def _annotation_keys(values: dict[str, str]) -> dict[str, str]:
    for key in values:
        _label_key(key)
    return values


ObjectName = Annotated[str, AfterValidator(_object_name),
                       WithJsonSchema({"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN.pattern})]
# Label keys also name taints and topology domains (kubernetes.io/hostname).
LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
NamespaceName = Annotated[str, AfterValidator(_namespace)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
Annotations = Annotated[dict[str, str], AfterValidator(_annotation_keys)]
