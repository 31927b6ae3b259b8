"""The plan file a stage runs from, and where a run keeps its files.

The operator writes the plan file into a ConfigMap (mounted at /etc/rto/plan.json);
``rto run --local`` writes it next to the outputs. It carries the resolved spec (preset
merged) and the planner's decisions, so every stage of a run works from the same choices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .planner import RunPlan
from .schema.run import GROUP, VERSION, RunSpec
from .schema.validate import validate_spec

PLAN_KIND = "StagePlan"


def plan_document(run: str, namespace: str, spec: RunSpec, plan: RunPlan, output_dir: str) -> dict[str, Any]:
    resolved = spec.model_dump(by_alias=True, exclude_none=True, exclude={"preset"})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": PLAN_KIND, "run": run, "namespace": namespace,
            "outputDir": output_dir, "spec": resolved, "plan": plan.to_dict()}


@dataclass(frozen=True)
class StageJob:
    run: str
    namespace: str
    spec: RunSpec
    plan: dict[str, Any]  # RunPlan.to_dict()
    paths: RunPaths

    def stage_plan(self, stage: str) -> dict[str, Any]:
        if stage not in self.plan["stages"]:
            enabled = ", ".join(self.plan["stages"]) or "none"
            raise ValueError(f"stage {stage!r} is not in this run's plan (enabled stages: {enabled})")
        return self.plan["stages"][stage]


def load_job(path: str | Path) -> StageJob:
    document = json.loads(Path(path).read_text())
    if document.get("kind") != PLAN_KIND:
        raise ValueError(f"{path}: not a plan file (kind {document.get('kind')!r}, expected {PLAN_KIND})")
    spec = validate_spec(document["spec"])
    return StageJob(document["run"], document.get("namespace", ""), spec, document["plan"],
                    RunPaths(Path(document["outputDir"])))


@dataclass(frozen=True)
class RunPaths:
    """One run's files on its volume: per-stage folders, and the trained models later stages load."""

    root: Path

    def stage(self, stage: str) -> Path:
        return self.root / stage

    def results(self, stage: str) -> Path:
        return self.stage(stage) / "results.json"

    def checkpoints(self, stage: str, role: str) -> Path:
        return self.stage(stage) / "checkpoints" / role

    def model(self, role: str) -> Path:
        """Final weights of a model this run trained (role: generator, reward-model, policy)."""
        return self.root / "models" / role

    @property
    def tokenizer(self) -> Path:
        return self.root / "models" / "tokenizer"

    @property
    def selected(self) -> Path:
        return self.stage("select") / "selected.jsonl"

    @property
    def pool(self) -> Path:
        """Every trace the select stage scored, the ones it kept among them (sft.compareWithPool)."""
        return self.stage("select") / "pool.jsonl"
