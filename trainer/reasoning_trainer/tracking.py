"""Experiment tracking: every value a stage records for Prometheus, also written to TensorBoard
(by default), MLflow and Weights & Biases (when ``spec.tracking`` names them).

A series has one name everywhere: the Prometheus metric name, then its label values, joined by
``/`` (``rto_loss/generator``, ``rto_accuracy_ratio/gsm8k/pass_at_1``), against the stage's
training step. Tracking never stops training: a tracker that fails to open or to log is named in
a warning and left out from then on.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Protocol

from .schema.tracking import MlflowSpec, TrackingSpec, WandbSpec

log = logging.getLogger(__name__)

# What MLflow accepts in a metric name; TensorBoard and W&B take the same names.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
STEP_KEY = "trainer/step"


def metric_key(name: str, *labels: str) -> str:
    return "/".join(_UNSAFE.sub("_", part.replace("@", "_at_")) for part in (name, *labels))


class Tracker(Protocol):
    name: str

    def log(self, key: str, value: float, step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    name = "tensorboard"

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class Mlflow:
    """One MLflow run per stage, ``<run>-<stage>``, tagged with the run, namespace and stage."""

    name = "mlflow"

    def __init__(self, spec: MlflowSpec, run: str, namespace: str, stage: str):
        from mlflow import MlflowClient

        if spec.tracking_uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked; naming one in the spec is asking.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=spec.tracking_uri)
        experiment = self.client.get_experiment_by_name(spec.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(spec.experiment)
        tags = {"reasoning.dev/run": run, "reasoning.dev/namespace": namespace, "reasoning.dev/stage": stage}
        self.run_id = self.client.create_run(experiment_id, run_name=f"{run}-{stage}", tags=tags).info.run_id

    def log(self, key: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Wandb:
    """One W&B run per stage, grouped by the run; offline mode writes under the stage's folder."""

    name = "wandb"

    def __init__(self, spec: WandbSpec, run: str, namespace: str, stage: str, folder: Path):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=spec.project, entity=spec.entity, name=f"{run}-{stage}", group=run,
                              job_type=stage, mode=spec.mode, dir=str(folder),
                              config={"run": run, "namespace": namespace, "stage": stage},
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def log(self, key: str, value: float, step: int) -> None:
        self.run.log({key: value, STEP_KEY: step})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers a stage logs to."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @classmethod
    def open(cls, spec: TrackingSpec, folder: Path, run: str, namespace: str, stage: str) -> Trackers:
        wanted = []
        if spec.tensorboard:
            wanted.append(("tensorboard", lambda: TensorBoard(folder / "tensorboard")))
        if spec.mlflow:
            wanted.append(("mlflow", lambda: Mlflow(spec.mlflow, run, namespace, stage)))
        if spec.wandb:
            wanted.append(("wandb", lambda: Wandb(spec.wandb, run, namespace, stage, folder)))
        opened = []
        for name, start in wanted:
            try:
                opened.append(start())
            except Exception as error:  # a tracker of any kind failing must not stop training
                log.warning("experiment tracking: %s is off for this stage: %s: %s", name, type(error).__name__, error)
        return cls(opened)

    def log(self, key: str, value: float, step: int) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.log(key, float(value), step)
            except Exception as error:  # as above
                log.warning("experiment tracking: %s stopped logging: %s: %s", tracker.name, type(error).__name__,
                            error)
                self.trackers.remove(tracker)

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as error:  # as above
                log.warning("experiment tracking: closing %s: %s", tracker.name, error)
        self.trackers = []
