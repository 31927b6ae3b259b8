"""The CRD and the configuration reference are generated from the schema and never drift."""

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, resource
from reasoning_operator import crd
from reasoning_trainer.schema import reference


@pytest.mark.parametrize("target", crd.TARGETS, ids=str)
def test_committed_crd_matches_the_schema(target):
    assert (ROOT / target).read_text() == crd.render(), f"{target} is stale: run `make crd`"


def test_committed_configuration_reference_matches_the_schema():
    assert (ROOT / "docs/configuration.md").read_text() == reference.render(), "run `make docs`"


def test_crd_is_a_valid_kubernetes_object():
    kubernetes_validate.validate(crd.build_crd(), kubernetes_validate.latest_version(), strict=True)


def test_crd_names_columns_and_status():
    spec = crd.build_crd()["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["shortNames"]) == \
        ("reasoning.dev", "ReasoningTraining", ["rt"])
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [column["name"] for column in version["additionalPrinterColumns"]] == \
        ["Phase", "Stage", "Preset", "GPUs", "Accuracy", "Age"]


def _walk(node, path="$"):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_has_no_defaults():
    """Kubernetes rejects non-structural schemas; API-server defaults would override presets."""
    root = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "default" not in node and "$ref" not in node and "anyOf" not in node, path


def test_fields_have_descriptions_for_kubectl_explain():
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    sft = spec["properties"]["stages"]["properties"]["sft"]["properties"]
    assert sft["learningRate"]["description"] == "Peak learning rate."
    assert spec["properties"]["models"]["properties"]["generator"]["properties"]["loadIn8bit"]["description"]


def _validator():
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # OpenAPI v3.0's boolean exclusiveMinimum is draft 4's.
    return jsonschema.Draft4Validator(schema)


def test_examples_pass_the_crd_schema_and_their_other_objects_kubernetes():
    validator = _validator()
    for example in sorted((ROOT / "manifests/examples").glob("*.yaml")):
        for document in yaml.safe_load_all(example.read_text()):
            if document["kind"] != "ReasoningTraining":
                kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
                continue
            errors = list(validator.iter_errors(document))
            assert not errors, (example, errors[0].message if errors else None)


@pytest.mark.parametrize("spec, field", [
    ({"preset": "fast", "stages": {"sft": {"batchSize": 0}}}, "batchSize"),
    ({"preset": "fast", "stages": {"sft": {"learningRate": 0}}}, "learningRate"),
    ({"preset": "fast", "stages": {"rl": {"algorithm": "dpo"}}}, "algorithm"),
    ({"preset": "huge"}, "preset"),
    ({"preset": "fast", "gpu": {"memory": "lots"}}, "memory"),
])
def test_crd_schema_rejects_what_it_can(spec, field):
    errors = list(_validator().iter_errors(resource(spec)))
    assert errors and any(field in list(error.absolute_path) for error in errors)
