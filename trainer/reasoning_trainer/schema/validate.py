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
from . import manifest_yaml
from .checks import cross_field_issues
from .errors import Issue, RunValidationError, issues_from_pydantic
from .names import dns_label_problem
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
    metadata = resource.get("metadata")
    name = None
    if not isinstance(metadata, dict):
        issues.append(Issue("metadata", "required mapping with the run's name: metadata: {name: my-run}"
                            if metadata is None else f"must be a mapping (name, namespace, labels), got "
                                                     f"{type(metadata).__name__}"))
    else:
        name = metadata.get("name")
        if name is None or name == "":
            issues.append(Issue("metadata.name", "required; name the run (it names the stage Jobs)"))
        elif not isinstance(name, str):
            issues.append(Issue("metadata.name", f"must be a string; quote it: name: \"{name}\""))
        elif problem := dns_label_problem(name):
            issues.append(Issue("metadata.name", f"{problem} (it names the stage Jobs and their pods)"))
        namespace = metadata.get("namespace")
        if namespace is not None and (not isinstance(namespace, str) or dns_label_problem(namespace)):
            issues.append(Issue("metadata.namespace", f"must be a namespace name: {dns_label_problem(str(namespace))}"
                                if isinstance(namespace, str) else "must be a string"))
    if issues:
        raise RunValidationError(issues)
    return name, validate_spec(resource.get("spec"))


def load_run_file(path: str | Path) -> tuple[str, RunSpec]:
    """The run in a manifest file, validated."""
    return validate_resource(load_run_document(path))


def load_run_document(path: str | Path) -> Any:
    """The run's document in a manifest file, as written; other documents beside it (a claim, a
    Secret) are skipped."""
    documents = _documents(Path(path))
    runs = [document for document in documents if isinstance(document, dict) and document.get("kind") == KIND]
    if len(documents) > 1 and len(runs) != 1:
        raise RunValidationError([Issue(str(path), f"holds {len(runs)} {KIND} documents among {len(documents)}; "
                                                   f"put one run per file")])
    return runs[0] if runs else documents[0] if documents else None


def _documents(path: Path) -> list[Any]:
    """The file's YAML documents, or an issue that names the file and says what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunValidationError([Issue(str(path), "no such file")]) from None
    except IsADirectoryError:
        raise RunValidationError([Issue(str(path), "is a directory; name the manifest file in it")]) from None
    except UnicodeDecodeError as error:
        raise RunValidationError([Issue(str(path), f"is not UTF-8 text (byte {error.start}); save it as UTF-8")]) \
            from None
    except OSError as error:
        raise RunValidationError([Issue(str(path), f"cannot be read: {error.strerror}")]) from None
    try:
        return manifest_yaml.load_all(text)
    except manifest_yaml.DuplicateKey as error:
        raise RunValidationError([Issue(error.path, f"written twice (lines {error.first_line} and "
                                                    f"{error.second_line} of {path}); keep one")]) from None
    except yaml.YAMLError as error:
        raise RunValidationError([Issue(str(path), f"is not valid YAML: {error}")]) from None
