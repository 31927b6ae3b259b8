"""Tolerations and affinities, valid and not, with the field path a refusal must name.

``test_validation.py`` runs them through ``rto validate``; ``e2e/test_operator.py`` puts each into a
Job's pod template on the API server, whose verdict admission must match (refusing also what the
API server lets through only where ``stricter`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NODE_REQUIRED = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
POD_REQUIRED = "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution"


@dataclass(frozen=True)
class PodCase:
    id: str
    field: str  # affinity or tolerations
    value: Any
    path: str | None  # None: admitted; else the field path the refusal names
    stricter: str = ""


def _node_terms(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def _node_expression(**requirement: Any) -> dict[str, Any]:
    return _node_terms({"matchExpressions": [requirement]})


def _pod_term(**term: Any) -> dict[str, Any]:
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def _pod_selector(*expressions: dict[str, Any]) -> dict[str, Any]:
    return _pod_term(labelSelector={"matchExpressions": list(expressions)}, topologyKey="kubernetes.io/hostname")


EXPRESSION = f"{NODE_REQUIRED}.nodeSelectorTerms.0.matchExpressions.0"

CASES = [
    # admitted
    PodCase("empty-affinity", "affinity", {}, None),
    PodCase("node-in", "affinity", _node_expression(key="nvidia.com/gpu.product", operator="In",
                                                    values=["NVIDIA-H100-80GB-HBM3"]), None),
    PodCase("node-gt", "affinity", _node_expression(key="gpu-count", operator="Gt", values=["3"]), None),
    PodCase("node-field", "affinity", _node_terms({"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]}), None),
    PodCase("node-preferred", "affinity", {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]}}, None),
    PodCase("pod-anti-preferred", "affinity", {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "llm"}},
                                           "topologyKey": "kubernetes.io/hostname", "namespaces": ["serving"]}}]}},
            None),
    PodCase("pod-match-label-keys", "affinity", _pod_term(labelSelector={"matchLabels": {"team": "a"}},
                                                          topologyKey="zone", matchLabelKeys=["run"]), None),
    PodCase("tolerate-everything", "tolerations", [{"operator": "Exists"}], None),
    PodCase("tolerate-noexecute-for-a-while", "tolerations",
            [{"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}], None),
    PodCase("tolerate-equal", "tolerations", [{"key": "pool", "value": "h100", "effect": "NoSchedule"}], None),
    # refused by both
    PodCase("in-without-values", "affinity", _node_expression(key="zone", operator="In", values=[]), EXPRESSION),
    PodCase("exists-with-values", "affinity", _node_expression(key="zone", operator="Exists", values=["a"]),
            EXPRESSION),
    PodCase("gt-two-values", "affinity", _node_expression(key="n", operator="Gt", values=["1", "2"]), EXPRESSION),
    PodCase("unknown-operator", "affinity", _node_expression(key="zone", operator="Like", values=["a"]),
            f"{EXPRESSION}.operator"),
    PodCase("no-node-selector-terms", "affinity", _node_terms(), f"{NODE_REQUIRED}.nodeSelectorTerms"),
    PodCase("node-label-key", "affinity", _node_expression(key="gpu type", operator="Exists"), f"{EXPRESSION}.key"),
    PodCase("node-label-value", "affinity", _node_expression(key="zone", operator="In", values=["eu west"]),
            f"{EXPRESSION}.values.0"),
    PodCase("node-field-labels", "affinity", _node_terms({"matchFields": [
        {"key": "metadata.labels", "operator": "In", "values": ["x"]}]}),
            f"{NODE_REQUIRED}.nodeSelectorTerms.0.matchFields.0.key"),
    PodCase("node-field-two-names", "affinity", _node_terms({"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-1", "gpu-2"]}]}),
            f"{NODE_REQUIRED}.nodeSelectorTerms.0.matchFields.0"),
    PodCase("weight-zero", "affinity", {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 0, "preference": {}}]}},
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution.0.weight"),
    PodCase("weight-a-string", "affinity", {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": "10", "podAffinityTerm": {"topologyKey": "zone"}}]}},
            "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution.0.weight"),
    PodCase("no-topology-key", "affinity", _pod_term(labelSelector={"matchLabels": {"a": "b"}}),
            f"{POD_REQUIRED}.0.topologyKey"),
    PodCase("topology-key-with-space", "affinity", _pod_term(labelSelector={}, topologyKey="host name"),
            f"{POD_REQUIRED}.0.topologyKey"),
    PodCase("selector-exists-with-values", "affinity",
            _pod_selector({"key": "app", "operator": "Exists", "values": ["x"]}),
            f"{POD_REQUIRED}.0.labelSelector.matchExpressions.0"),
    PodCase("selector-gt", "affinity", _pod_selector({"key": "n", "operator": "Gt", "values": ["1"]}),
            f"{POD_REQUIRED}.0.labelSelector.matchExpressions.0.operator"),
    PodCase("selector-label-value", "affinity",
            _pod_term(labelSelector={"matchLabels": {"app": "my app"}}, topologyKey="zone"),
            f"{POD_REQUIRED}.0.labelSelector.matchLabels.app"),
    PodCase("namespace-not-a-name", "affinity", _pod_term(labelSelector={}, topologyKey="zone", namespaces=["Team_A"]),
            f"{POD_REQUIRED}.0.namespaces.0"),
    PodCase("match-label-keys-without-selector", "affinity", _pod_term(topologyKey="zone", matchLabelKeys=["run"]),
            f"{POD_REQUIRED}.0"),
    PodCase("label-key-in-match-and-mismatch", "affinity",
            _pod_term(labelSelector={}, topologyKey="zone", matchLabelKeys=["run"], mismatchLabelKeys=["run"]),
            f"{POD_REQUIRED}.0"),
    PodCase("unknown-affinity-field", "affinity", {"nodeAffinity": {"requiredDuringScheduling": {}}},
            "spec.affinity.nodeAffinity.requiredDuringScheduling"),
    PodCase("toleration-exists-with-value", "tolerations", [{"key": "pool", "operator": "Exists", "value": "a"}],
            "spec.tolerations.0"),
    PodCase("toleration-equal-without-key", "tolerations", [{"operator": "Equal", "value": "a"}],
            "spec.tolerations.0"),
    PodCase("toleration-seconds-without-noexecute", "tolerations",
            [{"key": "spot", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}],
            "spec.tolerations.0"),
    PodCase("toleration-key", "tolerations", [{"key": "gpu pool", "operator": "Exists"}], "spec.tolerations.0.key"),
    PodCase("toleration-value", "tolerations", [{"key": "pool", "value": "h 100"}], "spec.tolerations.0.value"),
    # refused by admission only
    PodCase("gt-not-a-number", "affinity", _node_expression(key="n", operator="Gt", values=["many"]), EXPRESSION,
            stricter="the scheduler cannot compare a non-integer, so no node would ever match"),
]
