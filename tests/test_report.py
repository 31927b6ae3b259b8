"""report.html draws what the research plots whenever the run has the data: rollout accuracy and
search parallelism against RL FLOPs."""

from __future__ import annotations

from reasoning_trainer.report import write_report


def test_rl_accuracy_and_parallelism_are_drawn_against_flops(tmp_path):
    history = []
    for iteration in range(1, 7):
        spent = iteration * 1e12
        history += [{"step": iteration, "benchmark": "rollouts", "metric": "train", "accuracy": 0.1 * iteration,
                     "flops": spent},
                    {"step": iteration, "parallelism": 3.0 - 0.2 * iteration, "flops": spent}]
    rl = {"durationSeconds": 30.0, "accuracy": 0.6, "metrics": {}, "history": history,
          "peakMemoryBytes": {"cpu": 2**29}}
    page = write_report("demo", {"rl": rl}, tmp_path / "report.html").read_text()
    assert "<figcaption><b>Rollout accuracy against RL FLOPs.</b>" in page
    assert "<figcaption><b>Average parallelism against RL FLOPs.</b>" in page
    without = write_report("demo", {"rl": {**rl, "history": []}}, tmp_path / "plain.html").read_text()
    assert "against RL FLOPs" not in without
