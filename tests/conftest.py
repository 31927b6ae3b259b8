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


# A tiny run small enough for tests: the tiny preset with little data and short stages.
SMALL_TINY = {
    "preset": "tiny",
    "data": {"train": {"size": 120}, "pool": {"size": 60}, "eval": [{"name": "arithmetic", "split": "test",
                                                                      "size": 12, "seed": 1}]},
    "stages": {
        "select": {"keepFraction": 0.5, "batchSize": 16, "sample": {"samplesPerProblem": 2, "maxNewTokens": 40}},
        "sft": {"epochs": 1, "batchSize": 8, "checkpointEvery": 5, "maxSeqLength": 160, "compareWithPool": False,
                "monteCarlo": {"problems": 48, "samplesPerProblem": 2, "completions": 2, "maxNewTokens": 40,
                               "epochs": 1}},
        "rl": {"enabled": False},
        "eval": {"methods": ["pass@1", "rm@k", "majority@k"], "k": 2, "maxNewTokens": 40},
    },
}


def merge(base: dict, override: dict) -> dict:
    from reasoning_trainer.presets import deep_merge

    return deep_merge(base, override)


def write_plan(folder: Path, name: str, overrides: dict | None = None) -> Path:
    """A plan file for a small tiny run in folder, with no model built yet."""
    from reasoning_trainer.checkpoints import write_json
    from reasoning_trainer.job import plan_document
    from reasoning_trainer.planner import plan_run
    from reasoning_trainer.schema import validate_spec

    spec = validate_spec(merge(SMALL_TINY, overrides or {}))
    path = folder / "plan.json"
    write_json(path, plan_document(name, "tests", spec, plan_run(spec), str(folder)))
    return path


@pytest.fixture(scope="session")
def embedded_models(tmp_path_factory) -> Path:
    """The embedded base model and tokenizer, pretrained once per session (about 3.5 minutes on one core)."""
    from reasoning_trainer import models
    from reasoning_trainer.job import load_job

    folder = tmp_path_factory.mktemp("embedded")
    models.load_generator(load_job(write_plan(folder, "embedded")), "sft")
    return folder / "models"


@pytest.fixture
def plan_file(tmp_path, embedded_models):
    """Write a plan file for a small tiny run (``overrides`` merged over SMALL_TINY). Its output
    folder starts with the session's pretrained embedded base, as a run's later stages find it."""
    import shutil

    def write(overrides: dict | None = None, name: str = "small") -> Path:
        folder = tmp_path / name
        if not (folder / "models").exists():
            for part in ("base", "tokenizer"):
                shutil.copytree(embedded_models / part, folder / "models" / part)
        return write_plan(folder, name, overrides)

    return write


def pod_env(**extra: str) -> dict:
    """The environment of a fresh stage process: none of the distributed or accelerate variables an
    in-process DeepSpeed test leaves behind in this one."""
    import os

    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not key.startswith("ACCELERATE_")}
    return {**env, **extra}
