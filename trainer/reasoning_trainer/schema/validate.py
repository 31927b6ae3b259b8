"""The one entry point that turns a user's spec into a validated RunSpec.

Used alike by ``rto validate``, the planner CLI, the operator and the trainer, so a
resource is judged the same way everywhere: merge the preset, validate field by field,
then check what needs several fields at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import presets
from .checks import cross_field_issues
from .errors import Issue, RunValidationError, issues_from_pydantic
from .run import GROUP, KIND, VERSION, RunSpec


def resolve_spec(raw: dict[str, Any], prefix: str = "spec") -> dict[str, Any]:
    """The user's spec on top of its preset (if any), before validation."""
    name = raw.get("preset")
    if name is None:
        return raw
    if not isinstance(name, str) or name not in presets.available():
        choices = ", ".join(presets.available())
        raise RunValidationError([Issue(f"{prefix}.preset", f"unknown preset {name!r}; choose one of: {choices}")])
    preset = presets.load(name)
    gpu = raw.get("gpu")
    if isinstance(gpu, dict) and "type" in gpu and "memory" not in gpu:
        # A GPU type the user names sets the memory; the preset's memory was for its own GPUs.
        preset.get("gpu", {}).pop("memory", None)
    return presets.deep_merge(preset, raw)


def validate_spec(raw: Any, prefix: str = "spec") -> RunSpec:
    if not isinstance(raw, dict):
        raise RunValidationError([Issue(prefix, f"must be a mapping of fields, got {type(raw).__name__}")])
    merged = resolve_spec(raw, prefix)
    try:
        spec = RunSpec.model_validate(merged)
    except ValidationError as error:
        raise RunValidationError(issues_from_pydantic(error, RunSpec, prefix)) from None
    issues = cross_field_issues(spec, prefix)
    if issues:
        raise RunValidationError(issues)
    return spec


def validate_resource(resource: Any) -> tuple[str, RunSpec]:
    """(name, spec) of a ReasoningTraining manifest; a bare spec is accepted too, named 'run'."""
    if not isinstance(resource, dict):
        raise RunValidationError([Issue("(document)", "expected a ReasoningTraining resource or a spec mapping")])
    if "kind" not in resource and "spec" not in resource:
        return "run", validate_spec(resource)
    issues = []
    if resource.get("apiVersion") != f"{GROUP}/{VERSION}":
        issues.append(Issue("apiVersion", f"must be {GROUP}/{VERSION}, got {resource.get('apiVersion')!r}"))
    if resource.get("kind") != KIND:
        issues.append(Issue("kind", f"must be {KIND}, got {resource.get('kind')!r}"))
    name = (resource.get("metadata") or {}).get("name")
    if not name:
        issues.append(Issue("metadata.name", "required; name the run (it names the stage Jobs)"))
    if issues:
        raise RunValidationError(issues)
    return name, validate_spec(resource.get("spec"))


def load_run_file(path: str | Path) -> tuple[str, RunSpec]:
    """The run in a manifest file; other documents beside it (a claim, a Secret) are skipped."""
    try:
        documents = [document for document in yaml.safe_load_all(Path(path).read_text()) if document is not None]
    except yaml.YAMLError as error:
        raise RunValidationError([Issue(str(path), f"is not valid YAML: {error}")]) from None
    runs = [document for document in documents if isinstance(document, dict) and document.get("kind") == KIND]
    if len(documents) > 1 and len(runs) != 1:
        raise RunValidationError([Issue(str(path), f"holds {len(runs)} {KIND} documents among {len(documents)}; "
                                                   f"put one run per file")])
    return validate_resource(runs[0] if runs else documents[0] if documents else None)
