"""The ReasoningTraining CustomResourceDefinition, generated from the run schema.

``make crd`` writes it to manifests/crd.yaml and the chart; a test fails when the
committed copies drift from what the schema generates.

Pydantic's JSON schema becomes a Kubernetes structural schema: references inlined,
``X | None`` as ``nullable``, no defaults (the API server would apply them and they
would override a preset's values), JSON-schema exclusive bounds in OpenAPI v3.0 form.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from reasoning_trainer import presets
from reasoning_trainer.schema import GROUP, KIND, PLURAL, SHORT_NAME, VERSION, RunSpec, RunStatus

TARGETS = (Path("manifests/crd.yaml"), Path("charts/reasoning-operator/files/reasoningtrainings-crd.yaml"))
_DROPPED = {"title", "default", "$defs"}
# Helm's ownership marks for the README's release (reasoning-operator in namespace reasoning-operator),
# so that `helm install` adopts a CRD applied with kubectl instead of refusing it; the chart's
# template replaces them with the installing release's own.
HELM_OWNER = {
    "labels": {"app.kubernetes.io/managed-by": "Helm"},
    "annotations": {"meta.helm.sh/release-name": "reasoning-operator",
                    "meta.helm.sh/release-namespace": "reasoning-operator",
                    "helm.sh/resource-policy": "keep"},
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Preset", "type": "string", "jsonPath": ".spec.preset"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
    {"name": "Accuracy", "type": "string", "jsonPath": ".status.accuracy"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def openapi_schema(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = _convert(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {**target, **({"description": node["description"]} if "description" in node else {})}
    if "anyOf" in node:
        members = [member for member in node["anyOf"] if member.get("type") != "null"]
        if len(members) != 1:
            raise ValueError(f"cannot express a union of {len(members)} types in a structural schema: {node}")
        converted = {**_convert(members[0], defs), "nullable": True}
        if "description" in node:
            converted["description"] = node["description"]
        return _with_bounds(converted, node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key in ("anyOf", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if key == "properties":
            out[key] = {name: _convert(child, defs) for name, child in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _with_bounds(out, node)


def _with_bounds(out: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[plain] = node[bound]
            out[bound] = True
    return out


def _without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_required(value) for key, value in node.items() if key != "required"}
    if isinstance(node, list):
        return [_without_required(item) for item in node]
    return node


def build_crd() -> dict[str, Any]:
    # A preset fills in what a user leaves out (a model's name, say), so nothing in spec is required
    # at the API server; the operator validates the merged spec and reports what is missing.
    spec_schema = _without_required(openapi_schema(RunSpec))
    spec_schema["properties"]["preset"]["enum"] = presets.available()
    spec_schema["description"] = "What to train, on what data, through which stages, on which GPUs."
    status_schema = openapi_schema(RunStatus)
    status_schema["description"] = "Progress and results, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", **HELM_OWNER},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["all", "reasoning"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A reasoning-model post-training pipeline: PRM data selection, SFT, "
                                   "policy optimisation (GRPO or PGTS) and evaluation, run as Jobs.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
            }],
        },
    }


def render() -> str:
    header = "# Generated from the run schema by `make crd` (reasoning_operator.crd). Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the ReasoningTraining CRD generated from the schema")
    parser.add_argument("--root", default=".", help="repository root")
    args = parser.parse_args(argv)
    text = render()
    for target in TARGETS:
        path = Path(args.root) / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
