"""The cluster side of a run: GPUs, scheduling, image, storage, secrets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Quantity, SpecModel
from .names import Annotations, Labels, ObjectName
from .pod import Affinity, QueueTopology, ResourceRequirements, Toleration

# Memory of common data-centre and workstation GPUs, in GiB as the driver reports it.
GPU_TYPES: dict[str, float] = {
    "T4": 15.0,
    "V100-16GB": 16.0,
    "V100-32GB": 32.0,
    "A10": 24.0,
    "A10G": 24.0,
    "L4": 24.0,
    "RTX3090": 24.0,
    "RTX4090": 24.0,
    "A100-40GB": 40.0,
    "L40S": 48.0,
    "A6000": 48.0,
    "A100-80GB": 80.0,
    "H100": 80.0,
    "H100-80GB": 80.0,
    "H200": 141.0,
    "B200": 180.0,
}


class GpuSpec(SpecModel):
    type: Literal[tuple(GPU_TYPES)] | None = Field(  # type: ignore[valid-type]
        None, description="GPU model; sets memory from a table (A10G, L4, A100-80GB, H100, ...)."
    )
    memory: Quantity | None = Field(
        None, description="Memory per GPU (24Gi, 80Gi). Overrides the table of type."
    )
    max_per_node: int = Field(8, ge=1, le=64, description="Most GPUs one node offers.")
    resource_name: str = Field("nvidia.com/gpu", description="Extended resource requested for GPUs.")
    product_label: str | None = Field(
        None, description="Value of the node label nvidia.com/gpu.product to select (from GPU feature discovery)."
    )


class StorageSpec(SpecModel):
    """Volume for checkpoints and results, shared by all stages."""

    existing_claim: ObjectName | None = Field(None, description="Use this PersistentVolumeClaim.")
    size: Quantity | None = Field(None, description="Create a claim of this size (100Gi).")
    storage_class_name: ObjectName | None = Field(None, description="Storage class of the created claim.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"], min_length=1, description="Access modes of the created claim."
    )
    when_deleted: Literal["Retain", "Delete"] = Field(
        "Retain", description="What deleting the run does to the claim it created: Retain keeps it, with every "
                              "checkpoint and trained model (a later run mounts it with existingClaim); Delete "
                              "deletes it with the run. A claim named by existingClaim is never deleted.")

    @model_validator(mode="after")
    def _one_volume(self) -> StorageSpec:
        if (self.existing_claim is None) == (self.size is None):
            raise ValueError("set exactly one of existingClaim (use a claim) and size (create one)")
        return self


class SecretKeyRef(SpecModel):
    name: ObjectName = Field(description="Secret name.")
    key: str = Field("token", min_length=1, description="Key inside the Secret.")


class ClusterFields(SpecModel):
    """Mixed into the run spec: how the stage pods are scheduled and what they mount."""

    device: Literal["gpu", "cpu"] = Field("gpu", description="Run stages on GPUs, or on CPU only.")
    gpu: GpuSpec = Field(default_factory=GpuSpec, description="GPUs the stages run on.")
    image: str | None = Field(None, description="Trainer image; defaults to the operator's configured image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the trainer image.")
    storage: StorageSpec | None = Field(None, description="Checkpoint and result volume.")
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Secret holding a Hugging Face token (never copied into status, events or logs)."
    )
    node_selector: Labels = Field(default_factory=dict, description="Node labels the stage pods require.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the stage pods tolerate.")
    affinity: Affinity | None = Field(None, description="Node and pod affinity of the stage pods, as in a PodSpec.")
    resources: ResourceRequirements | None = Field(
        None, description="CPU, memory and ephemeral-storage requests and limits of the trainer container in "
                          "every stage pod; the planned GPUs are added to them.")
    pod_labels: Labels = Field(
        default_factory=dict, description="Extra labels of the stage pods (cost centre, autoscaler hints); "
                                          "the operator's own labels win on a clash.")
    pod_annotations: Annotations = Field(
        default_factory=dict, description="Extra annotations of the stage pods (sidecar injection, "
                                          "cluster-autoscaler safe-to-evict, ...).")
    priority_class_name: ObjectName | None = Field(None, description="PriorityClass of the stage pods.")
    scheduler_name: str | None = Field(None, description="Scheduler of the stage pods (volcano, ...).")
    queue_name: ObjectName | None = Field(None, description="Kueue LocalQueue; Jobs start suspended for Kueue to "
                                                            "admit.")
    queue_topology: QueueTopology | None = Field(
        None, description="Kueue topology-aware scheduling of the stage pods; needs queueName and a "
                          "TopologyAwareScheduling-enabled Kueue.")
    backoff_limit: int = Field(2, ge=0, le=100, description="Retries of a failed stage, each from its last checkpoint.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Longest a stage may take, in seconds, its retries included; past it the stage "
                                "fails with reason DeadlineExceeded.")
    suspend: bool = Field(False, description="Suspend the current stage; set false to resume.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete finished Jobs after this long (status and results are kept)."
    )
