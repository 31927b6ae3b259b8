"""Presets are data (config/presets/*.yaml): partial run specs a resource starts from."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml

_PACKAGE = "reasoning_trainer.preset_files"


def available() -> list[str]:
    return sorted(entry.name.removesuffix(".yaml") for entry in resources.files(_PACKAGE).iterdir()
                  if entry.name.endswith(".yaml"))


def load(name: str) -> dict[str, Any]:
    """The preset's spec fragment (camelCase keys, as a user would write it)."""
    if name not in available():
        raise KeyError(name)
    text = resources.files(_PACKAGE).joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
