"""The evaluation benchmark registry is data (config/benchmarks/registry.yaml): per benchmark its hub
id, record fields, answer format and instruction, plus samples/<name>.jsonl, a few problems in the
benchmark's own record format written by this project (offline tests of every format)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import yaml

_PACKAGE = "reasoning_trainer.benchmark_files"


@cache
def registry() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(resources.files(_PACKAGE).joinpath("registry.yaml").read_text())


def names() -> list[str]:
    return list(registry())


def entry(name: str) -> dict[str, Any]:
    """The registry's fields for a benchmark (camelCase, as a spec writes them)."""
    return dict(registry()[name])


def sample_records(name: str) -> list[dict[str, Any]]:
    text = resources.files(_PACKAGE).joinpath("samples", f"{name}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
