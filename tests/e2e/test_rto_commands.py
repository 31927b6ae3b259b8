"""``rto``'s cluster commands as a user types them, against the real control plane and operator:
submit (refusing what the operator would), status, results, logs, delete."""

from __future__ import annotations

import json
import threading

import pytest
import yaml
from kit import wait_for
from test_operator import RESULT, cluster, kwok, namespace, rto, start_operator, status, tiny_run  # noqa: F401

pytestmark = pytest.mark.e2e


def write(tmp_path, resource: dict) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(resource))
    return str(path)


def test_submit_refuses_what_the_operator_would_and_creates_nothing(cluster, namespace, tmp_path):
    bad = tiny_run("bad", stages={"sft": {"learningRate": "fast"}})
    refused = rto(cluster, "submit", "-f", write(tmp_path, bad), "-n", namespace)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "rto submit: invalid:\n  spec.stages.sft.learningRate: must be a number" in refused.stderr
    listed = rto(cluster, "status", "-n", namespace)
    assert listed.returncode == 0 and listed.stdout.strip() == "no runs in this namespace (rto submit -f run.yaml " \
                                                               "creates one)"
    missing = rto(cluster, "status", "nothing", "-n", namespace)
    assert missing.returncode == 1 and f"no ReasoningTraining 'nothing' in namespace '{namespace}'" in missing.stderr


def test_a_run_submitted_watched_inspected_and_deleted_with_rto(cluster, namespace, start_operator, tmp_path):
    start_operator()
    manifest = write(tmp_path, tiny_run("daily", podAnnotations=kwok("1s")))
    submitted = rto(cluster, "submit", "-f", manifest, "-n", namespace, "--watch")
    assert submitted.returncode == 0, submitted.stderr
    lines = submitted.stdout.splitlines()
    assert lines[0] == f"reasoningtraining/daily created in {namespace}"
    assert "eval: Succeeded: succeeded, accuracy 62.5%" in lines and lines[-1] == "run Succeeded, accuracy 62.5%"

    listed = rto(cluster, "status", "-n", namespace).stdout.splitlines()
    assert listed[0].split() == ["NAME", "PHASE", "STAGE", "STAGES", "ACCURACY", "AGE"]
    assert listed[1].split()[:5] == ["daily", "Succeeded", "-", "4/4", "62.5%"]

    details = rto(cluster, "status", "daily", "-n", namespace).stdout
    assert details.startswith(f"daily ({namespace}): Succeeded, accuracy 62.5%\n  Ready: True")
    assert [line.split()[:2] for line in details.splitlines() if line.startswith(("select ", "eval "))] == \
        [["select", "Succeeded"], ["eval", "Succeeded"]]

    results = json.loads(rto(cluster, "results", "daily", "-n", namespace, "-o", "json").stdout)
    assert results["stages"]["eval"]["accuracy"] == RESULT["accuracy"]
    assert results["outputDir"] == status(cluster, namespace, "daily")["outputDir"]
    assert "metrics:" in rto(cluster, "results", "daily", "-n", namespace).stdout

    # The kit runs no kubelet, so a log cannot be read: the command names the pod it asked for.
    logs = rto(cluster, "logs", "daily", "--stage", "sft", "-n", namespace)
    assert logs.returncode == 1 and "Traceback" not in logs.stderr
    assert logs.stderr.startswith("==> pod daily-sft-") and "rto logs: reading the log of pod daily-sft-" in logs.stderr

    # The report's reader pod: the run's claim read-only, the restricted standard, owned by the run.
    # The kit runs no container, so it never finishes: the command says so and removes the pod.
    created = []
    watcher = threading.Thread(target=lambda: created.append(wait_for(
        lambda: cluster.core.list_namespaced_pod(namespace, label_selector="reasoning.dev/role=report-reader").items,
        30, "the reader pod")[0]))
    watcher.start()
    report = rto(cluster, "report", "daily", "-n", namespace, "--timeout", "3")
    watcher.join()
    assert report.returncode == 1 and "did not finish within 3 s (phase" in report.stderr
    reader = created[0]
    assert reader.spec.volumes[0].persistent_volume_claim.claim_name == "daily-data"
    assert reader.spec.volumes[0].persistent_volume_claim.read_only and reader.spec.security_context.run_as_non_root
    assert reader.spec.containers[0].args == [status(cluster, namespace, "daily")["outputDir"]]
    assert reader.metadata.owner_references[0].name == "daily"
    assert not cluster.core.list_namespaced_pod(namespace, label_selector="reasoning.dev/role=report-reader").items

    again = rto(cluster, "submit", "-f", manifest, "-n", namespace)
    assert again.returncode == 1 and f"{namespace}/daily already exists (Succeeded)" in again.stderr
    deleted = rto(cluster, "delete", "daily", "-n", namespace)
    assert deleted.returncode == 0
    assert "kept: the claim daily-data with every checkpoint and trained model" in deleted.stdout
    assert rto(cluster, "status", "daily", "-n", namespace).returncode == 1
