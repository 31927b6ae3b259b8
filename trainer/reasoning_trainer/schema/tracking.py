"""Where a run's metrics go besides Prometheus: TensorBoard, MLflow, Weights & Biases."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import SpecModel
from .cluster import SecretKeyRef


class MlflowSpec(SpecModel):
    tracking_uri: str = Field(min_length=1, description="MLflow tracking server (https://mlflow.example.com), or "
                                                         "a file store on the run's volume (file:///data/mlruns).")
    experiment: str = Field("reasoning-operator", min_length=1, description="Experiment the stages log into.")
    token_secret: SecretKeyRef | None = Field(
        None, description="Secret holding a bearer token for the server (MLFLOW_TRACKING_TOKEN).")


class WandbSpec(SpecModel):
    project: str = Field(min_length=1, description="Weights & Biases project.")
    entity: str | None = Field(None, description="Team or user owning the project (default: the key's).")
    mode: Literal["online", "offline"] = Field(
        "online", description="offline writes runs under the stage's folder for a later `wandb sync`.")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the API key (WANDB_API_KEY); needed online.")


class TrackingSpec(SpecModel):
    """Every stage logs the same metrics as its Prometheus endpoint, under the same names
    (rto_loss/generator, rto_accuracy_ratio/gsm8k/pass_at_1, ...), against the training step."""

    tensorboard: bool = Field(True, description="TensorBoard event files in each stage's folder (tensorboard/).")
    mlflow: MlflowSpec | None = Field(None, description="Log to MLflow: one MLflow run per stage, named "
                                                        "<run>-<stage>.")
    wandb: WandbSpec | None = Field(None, description="Log to Weights & Biases: one W&B run per stage, grouped "
                                                      "by the run.")
