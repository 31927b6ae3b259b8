"""What would make a stage fit when nothing does: each suggestion is re-planned, never guessed."""

from __future__ import annotations

import copy
from typing import Any, Callable

from ..schema.cluster import GPU_TYPES
from ..schema.run import RunSpec
from . import plan as planner


def what_would_fit(spec: RunSpec, stage: str, gpu_memory_gib: float) -> list[str]:
    base = spec.model_dump(by_alias=True, exclude_none=True)
    advice = []
    for describe, change in _changes(spec, stage, base):
        candidate = copy.deepcopy(base)
        change(candidate)
        if _fits(candidate, stage, gpu_memory_gib):
            advice.append(describe)
    bigger = _bigger_gpu(base, stage, gpu_memory_gib)
    if bigger:
        advice.append(bigger)
    return advice


def _fits(raw: dict[str, Any], stage: str, gpu_memory_gib: float) -> bool:
    spec = RunSpec.model_validate(raw)
    context = planner._Context(spec, gpu_memory_gib)
    archs, issues = planner._architectures(spec)
    return not issues and planner._PLANNERS[stage](context, archs) is not None


def _changes(spec: RunSpec, stage: str, base: dict) -> list[tuple[str, Callable[[dict], None]]]:
    changes = []
    stage_spec = base["stages"][stage]
    trained = _trained_roles(spec, stage)
    if stage in ("sft",) or (stage == "rl" and spec.stages.rl.algorithm == "grpo"):
        for nodes in (2, 4, 8):
            total = nodes * spec.gpu.max_per_node
            changes.append((f"stages.{stage}.nodes: {nodes} ({total} GPUs)",
                            _setter(["stages", stage, "nodes"], nodes)))
    for role in trained:
        if "lora" not in base["models"][role]:
            changes.append((f"models.{role}.lora: {{r: 16}} (train adapters, not every weight)",
                            _setter(["models", role, "lora"], {"r": 16})))
    for role in ("generator", "rewardModel"):
        model = base["models"].get(role)
        if model is not None and model.get("loadIn8bit") is False:
            changes.append((f"models.{role}.loadIn8bit: true", _setter(["models", role, "loadIn8bit"], True)))
    batch = stage_spec.get("batchSize", 1)
    accumulation = stage_spec.get("gradientAccumulationSteps", 1)
    smaller = batch // 2
    while smaller >= 1:
        factor = batch // smaller
        keep = f" with gradientAccumulationSteps: {accumulation * factor} (same effective batch)" \
            if "gradientAccumulationSteps" in stage_spec else ""
        changes.append((f"stages.{stage}.batchSize: {smaller}{keep}",
                        _batch_setter(stage, smaller, accumulation * factor)))
        if smaller == 1:
            break
        smaller //= 2
    return changes[:8]


def _trained_roles(spec: RunSpec, stage: str) -> list[str]:
    if stage == "sft":
        return {"generator": ["generator"], "reward-model": ["rewardModel"],
                "both": ["rewardModel", "generator"]}[spec.stages.sft.target]
    if stage == "rl" and spec.stages.rl.algorithm == "grpo":
        return ["generator"]
    return []


def _bigger_gpu(base: dict, stage: str, gpu_memory_gib: float) -> str | None:
    for name, memory in sorted(GPU_TYPES.items(), key=lambda item: item[1]):
        if memory > gpu_memory_gib and _fits(base, stage, memory):
            return f"gpu.type: {name} ({memory:g} GiB GPUs)"
    return None


def _setter(path: list[str], value: Any) -> Callable[[dict], None]:
    def apply(raw: dict) -> None:
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return apply


def _batch_setter(stage: str, batch: int, accumulation: int) -> Callable[[dict], None]:
    def apply(raw: dict) -> None:
        raw["stages"][stage]["batchSize"] = batch
        if "gradientAccumulationSteps" in raw["stages"][stage]:
            raw["stages"][stage]["gradientAccumulationSteps"] = accumulation
    return apply
