"""``rto report RUN``'s way from the reader pod's output to report.html, with the API calls
stubbed (the kit runs no container, so tests/e2e/test_rto_commands.py covers the pod but not its output)."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

from reasoning_operator import commands
from reasoning_operator.connect import Cluster

RESULTS = {"sft": {"durationSeconds": 12.0, "accuracy": 0.5, "metrics": {"held_out_accuracy_after": 0.5},
                   "history": [{"step": 1, "role": "generator", "loss": 1.0},
                               {"step": 2, "role": "generator", "loss": 0.5}],
                   "peakMemoryBytes": {"cpu": 2**29}, "plan": {"memory_gib": 0.6}}}
RUN = {"metadata": {"name": "daily", "namespace": "team", "uid": "0123456789"},
       "spec": {"image": "trainer:1", "storage": {"existingClaim": "shared"}},
       "status": {"phase": "Succeeded", "outputDir": "/data/daily-01234567"}}


class Core:
    def __init__(self):
        self.created, self.deleted = [], []

    def create_namespaced_pod(self, namespace, body):
        self.created.append(body)

    def read_namespaced_pod(self, name, namespace):
        return SimpleNamespace(status=SimpleNamespace(phase="Succeeded", conditions=[]))

    def read_namespaced_pod_log(self, name, namespace, container):
        return json.dumps(RESULTS)

    def delete_namespaced_pod(self, name, namespace, grace_period_seconds):
        self.deleted.append(name)


def test_the_reader_pods_results_become_the_same_report_as_a_local_run(tmp_path, monkeypatch, capsys):
    core = Core()
    cluster = Cluster("team", SimpleNamespace(get_namespaced_custom_object=lambda *args: RUN), core, None)
    monkeypatch.setattr(commands.connect, "connect", lambda args: cluster)
    target = tmp_path / "daily.html"
    args = argparse.Namespace(run="daily", output=str(target), image=None, timeout=5)
    assert commands.write_cluster_report(args) == 0
    (pod,) = core.created
    assert pod["spec"]["containers"][0]["image"] == "trainer:1"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared", "readOnly": True}
    assert core.deleted == [pod["metadata"]["name"]]
    report = target.read_text()
    assert "<h1>Run daily</h1>" in report and 'alt="Training loss"' in report
    assert capsys.readouterr().out == f"report: {target} (stages sft)\n"


def test_rto_logs_prints_a_stage_pods_json_log_lines_as_text():
    line = json.dumps({"time": "2026-12-01T10:50:10", "level": "INFO", "logger": "reasoning_trainer",
                       "message": "[sft] 40% done, about 12s left"})
    assert commands.as_text(line) == "10:50:10 INFO reasoning_trainer: [sft] 40% done, about 12s left"
    assert commands.as_text("Traceback (most recent call last):") == "Traceback (most recent call last):"
    assert commands.as_text("{not json") == "{not json"
    assert list(commands._lines([b"first\nsec", b"ond\nthird"])) == ["first", "second", "third"]
