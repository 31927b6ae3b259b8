"""Experiment tracking: a stage's metrics reach TensorBoard, MLflow (a local file store) and
Weights & Biases (offline mode) under their Prometheus names, against the training step; a
tracker that fails never stops training."""

from __future__ import annotations

import logging
import time

from reasoning_trainer.metrics import StageMetrics
from reasoning_trainer.schema.tracking import TrackingSpec
from reasoning_trainer.tracking import Trackers, metric_key


def record(metrics: StageMetrics) -> None:
    for step in (1, 2, 3):
        metrics.loss("generator", step, 1.0 / step, learning_rate=1e-4)
    metrics.accuracy("gsm8k", "pass@1", 0.5)
    metrics.search(parallelism=2.5, nodes=7.0, tokens=120.0)


def test_series_are_named_as_in_prometheus_with_their_label_values():
    assert metric_key("rto_loss", "generator") == "rto_loss/generator"
    assert metric_key("rto_accuracy_ratio", "gsm8k", "rm@8") == "rto_accuracy_ratio/gsm8k/rm_at_8"
    assert metric_key("rto_accuracy_ratio", "MMLU:STEM", "pass@1") == "rto_accuracy_ratio/MMLU_STEM/pass_at_1"


def test_tensorboard_and_mlflow_get_every_value_against_the_step(tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file://{tmp_path}/mlruns"
    spec = TrackingSpec.model_validate({"mlflow": {"trackingUri": store, "experiment": "tiny"}})
    metrics = StageMetrics("demo", "team", "sft")
    metrics.trackers = Trackers.open(spec, tmp_path / "sft", "demo", "team", "sft")
    assert [tracker.name for tracker in metrics.trackers.trackers] == ["tensorboard", "mlflow"]
    record(metrics)
    metrics.trackers.close()

    events = EventAccumulator(str(tmp_path / "sft" / "tensorboard"))
    events.Reload()
    assert [(event.step, round(event.value, 3)) for event in events.Scalars("rto_loss/generator")] == \
        [(1, 1.0), (2, 0.5), (3, 0.333)]
    assert events.Scalars("rto_average_parallelism")[0].step == 3, "a value without a step takes the latest"

    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert (run.info.run_name, run.info.status) == ("demo-sft", "FINISHED")
    assert run.data.tags["reasoning.dev/namespace"] == "team"
    assert [(point.step, point.value) for point in client.get_metric_history(run.info.run_id, "rto_loss/generator")] \
        == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert run.data.metrics["rto_accuracy_ratio/gsm8k/pass_at_1"] == 0.5


def test_weights_and_biases_offline_writes_a_run_to_sync_later(tmp_path):
    spec = TrackingSpec.model_validate({"tensorboard": False, "wandb": {"project": "tiny", "mode": "offline"}})
    metrics = StageMetrics("demo", "team", "rl")
    metrics.trackers = Trackers.open(spec, tmp_path / "rl", "demo", "team", "rl")
    assert [tracker.name for tracker in metrics.trackers.trackers] == ["wandb"]
    record(metrics)
    metrics.trackers.close()
    (run_file,) = (tmp_path / "rl" / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's own service process writes the run file; it may finish writing just after finish().
    keys = (b"rto_loss/generator", b"rto_accuracy_ratio/gsm8k/pass_at_1", b"trainer/step")
    deadline = time.monotonic() + 30
    while not all(key in run_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    logged = run_file.read_bytes()
    for key in keys:
        assert key in logged, key


class Broken:
    name = "broken"

    def log(self, key, value, step):
        raise ConnectionError("tracking server went away")

    def close(self):
        raise AssertionError("a tracker that stopped logging is not closed")


def test_a_failing_tracker_is_dropped_with_a_warning_and_training_goes_on(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    spec = TrackingSpec.model_validate({"tensorboard": False, "mlflow": {"trackingUri": "bogus://nowhere"}})
    trackers = Trackers.open(spec, tmp_path, "demo", "team", "sft")
    assert trackers.trackers == [] and "mlflow is off for this stage" in caplog.text
    metrics = StageMetrics("demo", "team", "sft", trackers=Trackers([Broken()]))
    record(metrics)
    assert metrics.trackers.trackers == [] and "broken stopped logging: ConnectionError" in caplog.text
    metrics.trackers.close()
    assert [point["accuracy"] for point in metrics.history if "accuracy" in point] == [0.5]
    assert metrics.history[-1]["parallelism"] == 2.5
