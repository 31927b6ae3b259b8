"""The ReasoningTraining resource: spec and status."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import SpecModel
from .cluster import ClusterFields
from .data import DataSpec
from .models import ModelsSpec
from .stages import StagesSpec
from .tracking import TrackingSpec

GROUP = "reasoning.dev"
VERSION = "v1alpha1"
KIND = "ReasoningTraining"
PLURAL = "reasoningtrainings"
SHORT_NAME = "rt"
STAGE_ORDER = ("select", "sft", "rl", "eval")


class RunSpec(ClusterFields):
    """What to train, on what data, through which stages, on which cluster resources."""

    preset: str | None = Field(
        None, description="Start from a preset (tiny, fast, 2gpu, full); any field set here overrides it."
    )
    models: ModelsSpec = Field(default_factory=ModelsSpec,
                               description="Generator, process reward model and PGTS policy network.")
    data: DataSpec = Field(default_factory=DataSpec, description="Training problems, trace pool, benchmarks.")
    stages: StagesSpec = Field(default_factory=StagesSpec,
                               description="select, sft, rl and eval; a stage left out does not run.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec,
                                   description="Experiment tracking: TensorBoard (on by default), MLflow, W&B.")

    def enabled_stages(self) -> list[str]:
        return [name for name in STAGE_ORDER if (stage := getattr(self.stages, name)) and stage.enabled]

    @property
    def step_separator(self) -> str:
        """Text that ends a reasoning step, for the generator's output and the PRM's input alike."""
        return self.models.reward_model.step_separator if self.models.reward_model else "\n\n"

    def reward_model_trained_in(self) -> str | None:
        """The stage that trains the PRM on step labels: sft (target reward-model or both), or
        select when select runs too, because it scores the pool with the trained PRM."""
        enabled = self.enabled_stages()
        if "sft" not in enabled or self.stages.sft.target == "generator":
            return None
        return "select" if "select" in enabled else "sft"


class Condition(SpecModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class StageStatus(SpecModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended", "Stopped"] = Field(
        "Pending", description="Stopped: disabled (spec.stages.<stage>.enabled: false) after it started.")
    job: str | None = None
    gpus: int | None = None
    attempts: int = 0
    retries: int = Field(0, description="Explicit retries of this stage (rto retry, or the reasoning.dev/retry "
                                        "annotation).")
    restarts: int = Field(0, description="Restarts of a multi-node stage as a whole group after a rank failed.")
    start_time: str | None = None
    completion_time: str | None = None
    duration_seconds: float | None = None
    accuracy: float | None = None
    checkpoint: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str | None = Field(None, description="Why the stage failed, CamelCase: BackoffLimitExceeded, JobDeleted, ...")
    message: str = ""


class RunStatus(SpecModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = "Pending"
    stage: str | None = Field(None, description="The stage now running.")
    gpus: int | None = Field(None, description="Most GPUs any stage of the plan uses.")
    accuracy: str | None = Field(None, description="Headline accuracy of the last eval, e.g. 71.2%.")
    observed_generation: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    output_dir: str | None = Field(None, description="The run's folder on its volume: stage results, "
                                                     "checkpoints and trained models.")
    retried: str | None = Field(None, description="The last value of the reasoning.dev/retry annotation acted on.")
    conditions: list[Condition] = Field(default_factory=list)
    stages: dict[str, StageStatus] = Field(default_factory=dict)


class ReasoningTraining(SpecModel):
    api_version: Literal["reasoning.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ReasoningTraining"]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: RunSpec
    status: RunStatus | None = None
