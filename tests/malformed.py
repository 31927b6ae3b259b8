"""Malformed ReasoningTrainings, one mistake each, with the field path every refusal must name.

``test_malformed.py`` runs them through ``rto validate`` and the operator's admission;
``e2e/test_operator.py`` sends them to the API server, which must never admit less strictly.
``FILE_ONLY`` are mistakes only a file can hold (kubectl refuses them before any request).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

TOKEN = "hf_" + "q7Xv2LpR9sKd4Tz8WmNc3Bj6"  # what a user might paste where a Secret's name belongs

BASE: dict[str, Any] = {
    "apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining", "metadata": {"name": "bad"},
    "spec": {"preset": "fast", "storage": {"size": "10Gi"}},
}


@dataclass(frozen=True)
class Case:
    id: str
    path: str  # the field path the refusal names
    resource: Any
    cluster_only: bool = False  # a valid spec that only a cluster cannot run


def _spec(**fields: Any) -> dict[str, Any]:
    resource = copy.deepcopy(BASE)
    resource["spec"].update(fields)
    return resource


def _stage(stage: str, **fields: Any) -> dict[str, Any]:
    return _spec(stages={stage: fields})


def _top(**fields: Any) -> dict[str, Any]:
    resource = copy.deepcopy(BASE)
    resource.update(fields)
    return resource


def _without_storage() -> dict[str, Any]:
    resource = copy.deepcopy(BASE)
    del resource["spec"]["storage"]
    return resource


CASES = [
    # the resource's envelope
    Case("wrong-api-version", "apiVersion", _top(apiVersion="reasoning.dev/v1")),
    Case("wrong-kind", "kind", _top(kind="Training")),
    Case("metadata-a-list", "metadata", _top(metadata=["bad"])),
    Case("name-a-number", "metadata.name", _top(metadata={"name": 12})),
    Case("name-uppercase", "metadata.name", _top(metadata={"name": "Bad_Run"})),
    Case("name-too-long-for-a-label", "metadata.name", _top(metadata={"name": "r" * 70})),
    Case("name-too-long-for-job-names", "metadata.name", _top(metadata={"name": "r" * 60}), cluster_only=True),
    Case("namespace-invalid", "metadata.namespace", _top(metadata={"name": "bad", "namespace": "Team_A"})),
    Case("spec-a-list", "spec", _top(spec=["fast"])),
    # top-level spec fields
    Case("unknown-field", "spec.prest", _spec(prest="fast")),
    Case("unknown-preset", "spec.preset", _spec(preset="huge")),
    Case("device-unknown", "spec.device", _spec(device="tpu")),
    Case("pull-policy-unknown", "spec.imagePullPolicy", _spec(imagePullPolicy="Sometimes")),
    Case("backoff-quoted", "spec.backoffLimit", _spec(backoffLimit="3")),
    Case("backoff-negative", "spec.backoffLimit", _spec(backoffLimit=-1)),
    Case("suspend-yes", "spec.suspend", _spec(suspend="yes")),
    Case("ttl-negative", "spec.ttlSecondsAfterFinished", _spec(ttlSecondsAfterFinished=-5)),
    # storage
    Case("storage-missing", "spec.storage", _without_storage(), cluster_only=True),
    Case("storage-both", "spec.storage", _spec(storage={"size": "10Gi", "existingClaim": "data"})),
    Case("storage-size-words", "spec.storage.size", _spec(storage={"size": "lots"})),
    Case("storage-size-capital-k", "spec.storage.size", _spec(storage={"size": "500K"})),
    Case("storage-access-mode", "spec.storage.accessModes.0", _spec(storage={"size": "1Gi",
                                                                           "accessModes": ["ReadWriteAll"]})),
    Case("storage-when-deleted", "spec.storage.whenDeleted", _spec(storage={"size": "1Gi", "whenDeleted": "Keep"})),
    Case("claim-name-invalid", "spec.storage.existingClaim", _spec(storage={"existingClaim": "My_Claim"})),
    Case("storage-class-invalid", "spec.storage.storageClassName",
         _spec(storage={"size": "1Gi", "storageClassName": "Fast SSD"})),
    # secrets
    Case("token-pasted", "spec.hfTokenSecret", _spec(hfTokenSecret=TOKEN)),
    Case("secret-name-empty", "spec.hfTokenSecret.name", _spec(hfTokenSecret={"name": ""})),
    # pod template
    Case("pod-label-value", "spec.podLabels", _spec(podLabels={"team": "ml research"})),
    Case("pod-label-key", "spec.podLabels", _spec(podLabels={"a/b/c": "x"})),
    Case("pod-annotation-key", "spec.podAnnotations", _spec(podAnnotations={"bad key": "x"})),
    Case("node-selector-value", "spec.nodeSelector", _spec(nodeSelector={"pool": "x" * 70})),
    Case("toleration-effect", "spec.tolerations.0.effect", _spec(tolerations=[{"key": "gpu", "effect": "Sometimes"}])),
    Case("toleration-operator", "spec.tolerations.0.operator", _spec(tolerations=[{"key": "gpu", "operator": "Maybe"}])),
    Case("toleration-unknown-field", "spec.tolerations.0.tolerance",
         _spec(tolerations=[{"key": "gpu", "tolerance": 1}])),
    Case("affinity-a-string", "spec.affinity", _spec(affinity="gpu-nodes")),
    Case("resources-cpu-words", "spec.resources.requests.cpu", _spec(resources={"requests": {"cpu": "8 cores"}})),
    Case("resources-memory-unit", "spec.resources.limits.memory", _spec(resources={"limits": {"memory": "64GB"}})),
    Case("resources-request-over-limit", "spec.resources.requests",
         _spec(resources={"requests": {"memory": "64Gi"}, "limits": {"memory": "32Gi"}})),
    Case("resources-gpus", "spec.resources.requests", _spec(resources={"requests": {"nvidia.com/gpu": 2}})),
    Case("resources-unknown", "spec.resources.requests.hugepages", _spec(resources={"requests": {"hugepages": "1Gi"}})),
    Case("priority-class-invalid", "spec.priorityClassName", _spec(priorityClassName="High Priority")),
    Case("queue-invalid", "spec.queueName", _spec(queueName="Team Queue")),
    # GPUs
    Case("gpu-memory-unit", "spec.gpu.memory", _spec(gpu={"memory": "24GB"})),
    Case("gpu-type-unknown", "spec.gpu.type", _spec(gpu={"type": "GTX-1080"})),
    Case("gpu-per-node-zero", "spec.gpu.maxPerNode", _spec(gpu={"maxPerNode": 0})),
    Case("zero-gpus-on-gpu-run", "spec.stages.sft.gpus", _stage("sft", gpus=0)),
    Case("gpus-uneven-over-nodes", "spec.stages.sft.gpus", _stage("sft", gpus=3, nodes=2)),
    Case("multi-node-read-write-once", "spec.storage.accessModes", _stage("sft", gpus=16, nodes=2)),
    # stages and models
    Case("unknown-stage", "spec.stages.sfft", _spec(stages={"sfft": {}})),
    Case("no-stage-enabled", "spec.stages", _spec(stages={name: {"enabled": False} for name in ("sft", "rl", "eval")})),
    Case("epochs-zero", "spec.stages.sft.epochs", _stage("sft", epochs=0)),
    Case("learning-rate-negative", "spec.stages.sft.learningRate", _stage("sft", learningRate=-1)),
    Case("learning-rate-words", "spec.stages.sft.learningRate", _stage("sft", learningRate="fast")),
    Case("rl-algorithm-unknown", "spec.stages.rl.algorithm", _stage("rl", algorithm="ppo2")),
    Case("models-typo", "spec.models.genrator", _spec(models={"genrator": {"name": "Qwen/Qwen2.5-3B"}})),
]

# Mistakes only a file can hold: the YAML text, and the path the refusal names.
FILE_ONLY = [
    ("duplicate-key", "spec.preset",
     "apiVersion: reasoning.dev/v1alpha1\nkind: ReasoningTraining\nmetadata: {name: bad}\n"
     "spec:\n  preset: fast\n  storage: {size: 10Gi}\n  preset: full\n"),
    ("duplicate-nested-key", "spec.storage.size",
     "apiVersion: reasoning.dev/v1alpha1\nkind: ReasoningTraining\nmetadata: {name: bad}\n"
     "spec:\n  preset: fast\n  storage:\n    size: 10Gi\n    size: 20Gi\n"),
]
