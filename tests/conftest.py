import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def resource(spec: dict, name: str = "run") -> dict:
    """A ReasoningTraining manifest around ``spec``."""
    return {
        "apiVersion": "reasoning.dev/v1alpha1",
        "kind": "ReasoningTraining",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


@pytest.fixture
def write_manifest(tmp_path):
    import yaml

    def write(document: dict, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document))
        return path

    return write
