"""Rules that involve several fields of a run spec at once."""

from __future__ import annotations

from .errors import Issue
from .run import RunSpec


def cross_field_issues(spec: RunSpec, prefix: str = "spec") -> list[Issue]:
    return [
        *_stage_issues(spec, prefix),
        *_gpu_issues(spec, prefix),
        *_model_issues(spec, prefix),
        *_stage_gpu_issues(spec, prefix),
        *_method_issues(spec, prefix),
        *_queue_issues(spec, prefix),
        *_label_issues(spec, prefix),
    ]


def _label_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    sft, reward_model = spec.stages.sft, spec.models.reward_model
    issues = []
    if _on(sft) and "dataset" in sft.prm_labels and spec.data.step_labels is None:
        issues.append(Issue(f"{prefix}.data.stepLabels", "stages.sft.prmLabels names dataset: set data.stepLabels "
                                                         "(hubId or path, and format: trl, math-shepherd or prm800k)"))
    if _on(sft) and sft.target != "generator" and "montecarlo" in sft.prm_labels and spec.models.generator is None:
        issues.append(Issue(f"{prefix}.stages.sft.prmLabels", "montecarlo labels come from the generator's own "
                                                             "solutions: set models.generator, or use synthetic "
                                                             "or dataset labels"))
    if reward_model is not None and reward_model.step_token and _on(sft) and sft.target != "generator":
        issues.append(Issue(f"{prefix}.models.rewardModel.stepToken",
                            "a published PRM (stepToken) is used as it is, never trained: set stages.sft.target: "
                            "generator, or remove stepToken to train this model as the PRM"))
    return issues


def _queue_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    if spec.queue_topology and not spec.queue_name:
        return [Issue(f"{prefix}.queueTopology", "topology-aware scheduling is Kueue's: set queueName to the "
                                                 "LocalQueue that admits the run")]
    return []


def _stage_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    if not spec.enabled_stages():
        return [Issue(f"{prefix}.stages", "no stage is enabled; enable at least one of select, sft, rl, eval")]
    return []


def _gpu_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    if spec.device == "gpu" and spec.gpu.type is None and spec.gpu.memory is None:
        return [Issue(f"{prefix}.gpu", "set type (A10G, L4, A100-80GB, H100, ...) or memory (24Gi) "
                                       "so the planner can size each stage, or set device: cpu")]
    return []


def _model_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    stages, models = spec.stages, spec.models
    need_generator, need_reward_model = [], []
    if _on(stages.sft) and stages.sft.target in ("generator", "both"):
        need_generator.append("stages.sft")
    if _on(stages.sft) and stages.sft.target in ("reward-model", "both"):
        need_reward_model.append("stages.sft (target: reward-model)")
    if _on(stages.rl):
        need_generator.append("stages.rl")
        if stages.rl.algorithm == "pgts":
            need_reward_model.append("stages.rl (pgts scores steps with the PRM)")
        elif stages.rl.grpo.prm_weight > 0:
            need_reward_model.append("stages.rl (grpo.prmWeight > 0)")
    if _on(stages.select):
        need_reward_model.append("stages.select")
    if _on(stages.eval):
        need_generator.append("stages.eval")
        if "rm@k" in stages.eval.methods:
            need_reward_model.append("stages.eval (rm@k)")
    issues = []
    if need_generator and models.generator is None:
        issues.append(Issue(f"{prefix}.models.generator",
                            f"required by {', '.join(need_generator)}; set name (a hub id or a path) or a preset"))
    if need_reward_model and models.reward_model is None:
        issues.append(Issue(f"{prefix}.models.rewardModel",
                            f"required by {', '.join(need_reward_model)}; set name (a hub id or a path) or a preset"))
    issues += _eight_bit_training(spec, prefix)
    return issues


def _eight_bit_training(spec: RunSpec, prefix: str) -> list[Issue]:
    """8-bit weights cannot take full-parameter updates: only adapters can be trained on them."""
    sft, rl = spec.stages.sft, spec.stages.rl
    trained = {
        "generator": (_on(sft) and sft.target in ("generator", "both")) or (_on(rl) and rl.algorithm == "grpo"),
        "rewardModel": _on(sft) and sft.target in ("reward-model", "both"),
    }
    issues = []
    for role, model in (("generator", spec.models.generator), ("rewardModel", spec.models.reward_model)):
        if model is not None and trained[role] and model.load_in_8bit and model.lora is None:
            issues.append(Issue(f"{prefix}.models.{role}.loadIn8bit",
                                "8-bit weights cannot be fully fine-tuned; add lora: {} to train adapters "
                                "on them, or set loadIn8bit: false"))
    return issues


def _stage_gpu_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    issues = []
    per_node = spec.gpu.max_per_node
    for name in ("select", "sft", "rl", "eval"):
        stage = getattr(spec.stages, name)
        if stage is None or stage.gpus is None:
            continue
        path = f"{prefix}.stages.{name}.gpus"
        if spec.device == "cpu" and stage.gpus > 0:
            issues.append(Issue(path, f"device is cpu but {stage.gpus} GPUs were asked for; "
                                      "set gpus: 0 or device: gpu"))
        elif spec.device == "gpu" and stage.gpus == 0:
            issues.append(Issue(path, "device is gpu but 0 GPUs were asked for; omit gpus to let the planner "
                                      "decide, or set device: cpu"))
        elif stage.gpus % stage.nodes:
            issues.append(Issue(path, f"{stage.gpus} GPUs cannot be split evenly over {stage.nodes} nodes; "
                                      f"use a multiple of {stage.nodes}"))
        elif stage.gpus // stage.nodes > per_node:
            needed = -(-stage.gpus // per_node)
            issues.append(Issue(path, f"{stage.gpus} GPUs on {stage.nodes} node(s) is more than "
                                      f"gpu.maxPerNode ({per_node}) per node; set nodes: {needed} "
                                      f"or at most {per_node * stage.nodes} GPUs"))
        if stage.nodes > 1 and spec.storage is not None and spec.storage.size is not None \
                and "ReadWriteMany" not in spec.storage.access_modes:
            issues.append(Issue(f"{prefix}.storage.accessModes",
                                f"stages.{name} spans {stage.nodes} nodes, and each mounts the volume: "
                                f"use [ReadWriteMany] (a storage class that offers it, e.g. NFS or CephFS)"))
    return issues


def _method_issues(spec: RunSpec, prefix: str) -> list[Issue]:
    evaluation, rl = spec.stages.eval, spec.stages.rl
    if _on(evaluation) and "pgts" in evaluation.methods and not (_on(rl) and rl.algorithm == "pgts"):
        return [Issue(f"{prefix}.stages.eval.methods",
                      "pgts decoding needs the policy trained by stages.rl with algorithm: pgts; "
                      "enable that stage or remove pgts from methods")]
    return []


def _on(stage) -> bool:
    return stage is not None and stage.enabled
