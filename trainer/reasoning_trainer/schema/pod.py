"""Pod-template fields a run passes through to its stage pods: tolerations, affinity and the
trainer container's CPU, memory and scratch space.

They mirror the PodSpec's types and carry the API server's own rules for them (values that an
operator forbids or requires, the single value of Gt/Lt, weights 1-100, topology keys), so a run
the API server would refuse inside a Job's pod template is refused at admission, naming the field,
instead of every stage Job failing to be created.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .base import CpuQuantity, Quantity, SpecModel, cpu_cores, quantity_bytes
from .names import LabelKey, LabelValue, NamespaceName


class Toleration(SpecModel):
    """As in a PodSpec."""

    key: LabelKey | None = Field(None, description="Taint key; empty with operator Exists tolerates every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (the default).")
    value: LabelValue | None = Field(None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates every effect.")
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated before the pod is evicted.")

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError("operator: must be Exists when key is empty (which tolerates every taint); "
                             "set key, or operator: Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("value: must be empty when operator is Exists; remove it, or use operator: Equal")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("effect: must be NoExecute when tolerationSeconds is set")
        return self


def _values_problem(operator: str, values: list[str], single_for_in: bool = False) -> str | None:
    if operator in ("In", "NotIn"):
        if not values:
            return f"values: required when operator is {operator}; list at least one value"
        if single_for_in and len(values) != 1:
            return f"values: a matchFields requirement with operator {operator} takes exactly one value"
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            return f"values: must be empty when operator is {operator}; remove them"
    elif len(values) != 1 or not values[0].lstrip("-").isdigit():
        return f"values: operator {operator} takes exactly one integer value, e.g. values: [\"4\"]"
    return None


class NodeSelectorRequirement(SpecModel):
    key: LabelKey = Field(description="Node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="How the label's value is compared.")
    values: list[LabelValue] = Field(default_factory=list, description="Values to compare with.")

    @model_validator(mode="after")
    def _values(self) -> NodeSelectorRequirement:
        if problem := _values_problem(self.operator, self.values):
            raise ValueError(problem)
        return self


class NodeFieldRequirement(SpecModel):
    key: Literal["metadata.name"] = Field(description="Node field; only metadata.name is supported.")
    operator: Literal["In", "NotIn"] = Field(description="In or NotIn.")
    values: list[str] = Field(default_factory=list, description="The one node name.")

    @model_validator(mode="after")
    def _values(self) -> NodeFieldRequirement:
        if problem := _values_problem(self.operator, self.values, single_for_in=True):
            raise ValueError(problem)
        return self


class NodeSelectorTerm(SpecModel):
    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, description="Requirements on node labels, all of which must hold.")
    match_fields: list[NodeFieldRequirement] = Field(
        default_factory=list, description="Requirements on node fields, all of which must hold.")


class NodeSelector(SpecModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, description="Terms of which at least one must hold.")


class PreferredSchedulingTerm(SpecModel):
    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(SpecModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Nodes the pods must run on.")
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, description="Nodes the pods prefer, by weight.")


class LabelSelectorRequirement(SpecModel):
    key: LabelKey = Field(description="Pod label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the label's value is compared.")
    values: list[LabelValue] = Field(default_factory=list, description="Values to compare with.")

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        if problem := _values_problem(self.operator, self.values):
            raise ValueError(problem)
        return self


class LabelSelector(SpecModel):
    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="Labels to match exactly.")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Requirements on labels, all of which must hold.")


class PodAffinityTerm(SpecModel):
    label_selector: LabelSelector | None = Field(None, description="Pods this term is about.")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces of those pods, by label.")
    namespaces: list[NamespaceName] = Field(default_factory=list, description="Namespaces of those pods, by name.")
    topology_key: LabelKey = Field(description="Node label whose value defines a domain (kubernetes.io/hostname).")
    match_label_keys: list[LabelKey] = Field(
        default_factory=list, description="Label keys whose values are taken from the incoming pod.")
    mismatch_label_keys: list[LabelKey] = Field(
        default_factory=list, description="Label keys whose values must differ from the incoming pod's.")

    @model_validator(mode="after")
    def _label_keys(self) -> PodAffinityTerm:
        if self.label_selector is None and (self.match_label_keys or self.mismatch_label_keys):
            raise ValueError("matchLabelKeys and mismatchLabelKeys need a labelSelector; add one")
        if both := sorted(set(self.match_label_keys) & set(self.mismatch_label_keys)):
            raise ValueError(f"matchLabelKeys: {both} also in mismatchLabelKeys; a key can be in only one")
        return self


class WeightedPodAffinityTerm(SpecModel):
    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The preferred placement.")


class PodAffinity(SpecModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, description="Placements the pods must have.")
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, description="Placements the pods prefer, by weight.")


class QueueTopology(SpecModel):
    """Kueue's topology-aware scheduling: the ranks of a stage are admitted onto nodes that share one
    domain of a topology level (a rack, a block, a node), so their collectives stay on the fast links."""

    level: LabelKey = Field(description="Node label of the topology level defined in Kueue's Topology object "
                                        "(cloud.google.com/gce-topology-block, kubernetes.io/hostname, ...).")
    mode: Literal["Required", "Preferred"] = Field(
        "Required", description="Required: wait until one domain has room for every rank; Preferred: use "
                                "as few domains as possible.")


class Affinity(SpecModel):
    """As in a PodSpec."""

    node_affinity: NodeAffinity | None = Field(None, description="Which nodes the stage pods run on.")
    pod_affinity: PodAffinity | None = Field(None, description="Which pods the stage pods run next to.")
    pod_anti_affinity: PodAffinity | None = Field(None, description="Which pods the stage pods keep away from.")


class ResourceList(SpecModel):
    """As a container's requests or limits, without GPUs."""

    cpu: CpuQuantity | None = Field(None, description="CPU cores (4, 1.5, 500m).")
    memory: Quantity | None = Field(None, description="Memory (64Gi, 500M).")
    ephemeral_storage: Quantity | None = Field(None, alias="ephemeral-storage",
                                               description="Node-local scratch space (20Gi).")

    @model_validator(mode="before")
    @classmethod
    def _no_gpus(cls, value: Any) -> Any:
        if isinstance(value, dict) and (gpus := sorted(key for key in value if str(key).endswith("gpu"))):
            raise ValueError(f"{gpus[0]}: GPUs are planned, not set here; pin them with "
                             f"spec.stages.<stage>.gpus (spec.gpu.resourceName names another GPU resource)")
        return value

    def amounts(self) -> dict[str, float]:
        """Each set resource in one unit (cores or bytes), by its Kubernetes name."""
        found = {"cpu": self.cpu and cpu_cores(self.cpu), "memory": self.memory and quantity_bytes(self.memory),
                 "ephemeral-storage": self.ephemeral_storage and quantity_bytes(self.ephemeral_storage)}
        return {name: amount for name, amount in found.items() if amount is not None}

    def manifest(self) -> dict[str, str]:
        return self.model_dump(by_alias=True, exclude_none=True)


class ResourceRequirements(SpecModel):
    """As in a container; the GPUs are not set here but planned (spec.stages.<stage>.gpus pins them)."""

    limits: ResourceList = Field(default_factory=ResourceList,
                                 description="The most each stage pod may use (memory past it is an OOM kill).")
    requests: ResourceList = Field(default_factory=ResourceList,
                                   description="What the scheduler reserves for each stage pod.")

    @field_validator("requests")
    @classmethod
    def _within_limits(cls, requests: ResourceList, info: ValidationInfo) -> ResourceList:
        limits = info.data["limits"].amounts() if "limits" in info.data else {}
        for name, requested in requests.amounts().items():
            if name in limits and limits[name] < requested:
                raise ValueError(f"{name}: must be at most limits.{name}; raise the limit or lower the request")
        return requests
