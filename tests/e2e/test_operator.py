"""``rto operator`` on a real control plane: the README walkthrough, leader election, and faults.

kwok plays the stage pods: they run for a while and succeed or fail as their annotations say
(``spec.podAnnotations``), reporting the termination message a trainer would write.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kit import ROOT, RUN_LABEL, Cluster, JobWatcher, OperatorProcess, open_crd, operator_kubeconfig, wait_for

pytestmark = pytest.mark.e2e

# Fixtures live here, not in a conftest.py: a second conftest module would shadow tests/conftest.py,
# whose helpers the other test modules import by that name.


@pytest.fixture(scope="session")
def cluster():
    started = Cluster.start_or_skip()
    yield started
    started.stop()


@pytest.fixture
def namespace(cluster):
    cluster.ensure_crd()  # test_helm.py removes it
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # The default ServiceAccount appears a moment later; Jobs' pods need it.
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 30, "the default account")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def start_operator(cluster, namespace, tmp_path):
    """Start ``rto operator`` on the chart's RBAC in the test's namespace; stopped afterwards,
    and its log must show no request the RBAC refused."""
    kubeconfig = operator_kubeconfig(cluster, namespace, tmp_path)
    started = []

    def start(*args, env=None):
        process = OperatorProcess(kubeconfig, namespace, tmp_path, *args, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    for process in started:
        if process.forbidden_expected:
            continue
        assert not process.permission_refusals(), f"the chart's RBAC refused a call:\n{process.log()[-3000:]}"

TINY = ["select", "sft", "rl", "eval"]
RESULT = {"phase": "Succeeded", "durationSeconds": 1.5, "accuracy": 0.625, "checkpoint": "/data/models/stage",
          "metrics": {"loss": 0.25}}
# Only watch events may move a run on: a timer this slow never fires during a test.
EVENTS_ONLY = {"RTO_RESYNC_SECONDS": "3600"}


def kwok(delay: str = "1s", outcome: str = "succeed", message: dict | None = None) -> dict[str, str]:
    annotations = {"kwok.x-k8s.io/outcome": outcome, "kwok.x-k8s.io/termination-message": json.dumps(message or RESULT)}
    key = "pod-complete" if outcome == "succeed" else "pod-fail"
    annotations[f"{key}.stage.kwok.x-k8s.io/delay"] = delay
    return annotations


def tiny_run(name: str, **spec) -> dict:
    return {"apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining", "metadata": {"name": name},
            "spec": {"preset": "tiny", "storage": {"size": "2Gi"}, **spec}}


def status(cluster, namespace: str, name: str) -> dict:
    return cluster.run(namespace, name).get("status") or {}


def finished(cluster, namespace: str, name: str) -> str | None:
    phase = status(cluster, namespace, name).get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def test_readme_walkthrough_reaches_succeeded_driven_by_job_events(cluster, namespace, start_operator):
    """apply the CRD, ``rto operator``, apply manifests/examples/run.yaml, ``kubectl get rt -w``."""
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    operator = start_operator(env=EVENTS_ONLY)
    watching = subprocess.Popen([*_kubectl(cluster), "get", "rt", "-w", f"--namespace={namespace}"],
                                stdout=subprocess.PIPE, text=True)
    cluster.kubectl("apply", "-f", str(ROOT / "manifests/examples/run.yaml"), f"--namespace={namespace}")
    try:
        lines = _read_until(watching, "Succeeded", timeout=90)
    finally:
        watching.kill()
    watcher.stop()
    assert lines[0].split()[:2] == ["NAME", "PHASE"], lines
    run = cluster.run(namespace, "gsm8k-fast")
    stages = ["sft", "rl", "eval"]  # the fast preset's stages, in order
    assert sorted(run["status"]["stages"]) == sorted(stages)
    for stage in stages:
        assert run["status"]["stages"][stage]["phase"] == "Succeeded"
        job = cluster.jobs(namespace)[f"gsm8k-fast-{stage}"]
        assert job.metadata.owner_references[0].uid == run["metadata"]["uid"]
        assert job.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    conditions = {condition["type"]: condition for condition in run["status"]["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Failed"]["status"] == "False"
    reasons = [event.reason for event in cluster.events(namespace, "gsm8k-fast")]
    assert reasons.count("StageSucceeded") == 3 and "RunSucceeded" in reasons
    assert not watcher.duplicates()
    # With the timer at an hour, only the watch on Jobs can have started each next stage.
    print(f"\nhandoff (Job finished -> next Job exists): "
          f"{', '.join(f'{gap:.2f} s' for gap in watcher.handoffs('gsm8k-fast', stages))}")
    assert "leading: this replica" in operator.log()


@pytest.mark.parametrize("flags", [[], ["--standalone"]], ids=["leader-election", "standalone"])
def test_the_operator_reconciles_whether_or_not_kopfs_peering_crd_is_installed(cluster, namespace,
                                                                              start_operator, flags):
    cluster.apply(*_kopf_peering_crds())
    try:
        operator = start_operator(*flags)
        cluster.apply(tiny_run("peered", podAnnotations=kwok("0s")), namespace=namespace)
        assert wait_for(lambda: finished(cluster, namespace, "peered"), 90, "the run to finish") == "Succeeded"
        assert ("leading: this replica" in operator.log()) == (flags == [])
    finally:
        cluster.kubectl("delete", "crd", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev", "--wait=false")


def test_two_replicas_one_leads_and_the_standby_takes_over_after_kill_9(cluster, namespace, start_operator):
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    first = start_operator()
    wait_for(lambda: cluster.lease_holder(namespace) == first.identity, 30, "the first replica to lead")
    second = start_operator()
    wait_for(lambda: "standby" in second.log(), 30, "the second replica to stand by")
    for index in range(5):
        cluster.apply(tiny_run(f"pair-{index}", podAnnotations=kwok("3s")), namespace=namespace)
    wait_for(lambda: len(watcher.created) >= 5, 30, "the first stage Jobs")
    assert "pair-" not in second.log(), "the standby must not reconcile"
    first.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: cluster.lease_holder(namespace) == second.identity, 60, "the standby to take over")
    takeover = time.monotonic() - killed
    for index in range(5):
        assert wait_for(lambda: finished(cluster, namespace, f"pair-{index}"), 120, "the runs") == "Succeeded"
    watcher.stop()
    assert not watcher.duplicates()
    assert len(watcher.created) == 5 * len(TINY)
    print(f"\ntakeover after kill -9 of the leader: {takeover:.1f} s")


def test_kill_9_at_random_moments_loses_no_stage_and_duplicates_no_job(cluster, namespace, start_operator):
    kill_storm(cluster, namespace, start_operator, runs=20, pause=(0.3, 2.5), timeout=300)


@pytest.mark.slow
def test_soak_kill_9_across_many_runs_for_minutes(cluster, namespace, start_operator):
    """``make soak``: the same storm, longer, over more runs with longer stages."""
    kill_storm(cluster, namespace, start_operator, runs=60, pause=(0.5, 6.0), timeout=1200, delay="4s")


def kill_storm(cluster, namespace, start_operator, runs: int, pause: tuple[float, float], timeout: float,
               delay: str = "1s") -> None:
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    operator = start_operator()
    names = [f"storm-{index:02d}" for index in range(runs)]
    for name in names:
        cluster.apply(tiny_run(name, podAnnotations=kwok(delay)), namespace=namespace)
    chance, kills, deadline = random.Random(7), 0, time.monotonic() + timeout
    while not all(finished(cluster, namespace, name) for name in names):
        assert time.monotonic() < deadline, "the runs did not finish under repeated kill -9"
        time.sleep(chance.uniform(*pause))
        operator.restart()  # kill -9, then start again as a restarted container would (same identity)
        kills += 1
    watcher.stop()
    assert not watcher.duplicates(), watcher.duplicates()
    for name in names:
        run = status(cluster, namespace, name)
        assert run["phase"] == "Succeeded", (name, run)
        for stage in TINY:
            recorded = run["stages"][stage]
            assert recorded["metrics"] == {"loss": 0.25} and recorded["checkpoint"] == RESULT["checkpoint"], recorded
    assert len(watcher.created) == len(names) * len(TINY)
    print(f"\n{len(names)} runs, {kills} kill -9 of the operator: 0 duplicate Jobs, 0 lost stage results")


def test_the_operator_rides_out_a_kube_apiserver_restart(cluster, namespace, start_operator):
    if cluster.kit_state is None:
        pytest.skip("restarting kube-apiserver needs the kit the suite started itself")
    operator = start_operator()
    operator.forbidden_expected = True
    names = [f"outage-{index}" for index in range(3)]
    for name in names:
        cluster.apply(tiny_run(name, podAnnotations=kwok("3s")), namespace=namespace)
    wait_for(lambda: len(cluster.jobs(namespace)) >= 3, 30, "the first stage Jobs")
    cluster.restart_apiserver(down_seconds=5)
    for name in names:
        assert wait_for(lambda: finished(cluster, namespace, name), 180, f"{name} to finish") == "Succeeded"


def test_a_running_stage_job_deleted_by_a_user_fails_the_stage_once(cluster, namespace, start_operator):
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    operator = start_operator()
    cluster.apply(tiny_run("deleted", podAnnotations=kwok("60s")), namespace=namespace)
    wait_for(lambda: status(cluster, namespace, "deleted").get("stages", {}).get("select", {}).get("phase")
             == "Running", 30, "stage select to run")
    cluster.kubectl("delete", "job", "deleted-select", f"--namespace={namespace}")
    assert wait_for(lambda: finished(cluster, namespace, "deleted"), 30, "the run to fail") == "Failed"
    stage = status(cluster, namespace, "deleted")["stages"]["select"]
    assert stage["reason"] == "JobDeleted" and "deleted-select was deleted" in stage["message"]
    time.sleep(5)
    watcher.stop()
    assert list(watcher.uids) == ["deleted-select"], "nothing may be recreated"
    assert operator.log().count("reconcile failed") == 0


def test_an_evicted_stage_pod_is_replaced_and_the_stage_succeeds(cluster, namespace, start_operator):
    from kubernetes import client

    start_operator()
    cluster.apply(tiny_run("evicted", podAnnotations=kwok("6s")), namespace=namespace)
    pod = wait_for(lambda: [item for item in cluster.core.list_namespaced_pod(
        namespace, label_selector="reasoning.dev/stage=select").items if item.status.phase == "Running"],
        30, "the select pod to run")[0]
    cluster.core.create_namespaced_pod_eviction(pod.metadata.name, namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=namespace)))
    # The kit has no kubelet to stop the container: play it. The trainer checkpoints on SIGTERM and exits 143.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
        "phase": "Failed", "containerStatuses": [{
            "name": "trainer", "image": "trainer", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 143, "reason": "Error", "startedAt": now, "finishedAt": now}}}]}})
    assert wait_for(lambda: finished(cluster, namespace, "evicted"), 120, "the run to finish") == "Succeeded"
    assert status(cluster, namespace, "evicted")["stages"]["select"]["attempts"] == 1, \
        "an eviction must not use up the stage's retries"


def failed_run(cluster, namespace: str, start_operator, name: str, backoff_limit: int) -> JobWatcher:
    """A run whose first stage's pods fail with the trainer's out-of-memory message, once it has
    failed; the watcher of its Jobs is still watching."""
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    start_operator()
    failure = {"phase": "Failed", "reason": "CUDA out of memory at step 12"}
    cluster.apply(tiny_run(name, backoffLimit=backoff_limit, podAnnotations=kwok("0s", "fail", failure)),
                  namespace=namespace)
    assert wait_for(lambda: finished(cluster, namespace, name), 60, "the run to fail") == "Failed"
    return watcher


def test_a_stage_failing_past_its_backoff_limit_fails_the_run_with_the_trainers_reason(cluster, namespace,
                                                                                     start_operator):
    watcher = failed_run(cluster, namespace, start_operator, "crashing", backoff_limit=1)
    run = status(cluster, namespace, "crashing")
    stage = run["stages"]["select"]
    assert stage["reason"] == "BackoffLimitExceeded" and "CUDA out of memory" in stage["message"]
    assert stage["attempts"] == 2
    conditions = {condition["type"]: condition for condition in run["conditions"]}
    assert conditions["Failed"]["status"] == "True" and "CUDA out of memory" in conditions["Failed"]["message"]
    time.sleep(5)
    watcher.stop()
    assert list(watcher.uids) == ["crashing-select"], "a failed stage is never recreated"


def rto(cluster, *args: str) -> subprocess.CompletedProcess:
    """The ``rto`` CLI as a user runs it, on the test cluster's kubeconfig."""
    return subprocess.run([str(Path(sys.executable).parent / "rto"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "KUBECONFIG": cluster.kubeconfig})


def test_rto_retry_reruns_a_failed_stage_from_the_edited_spec_in_the_same_folder(cluster, namespace,
                                                                                start_operator):
    watcher = failed_run(cluster, namespace, start_operator, "flaky", backoff_limit=0)
    folder = status(cluster, namespace, "flaky")["outputDir"]
    first_plan = cluster.jobs(namespace)["flaky-select"].spec.template.spec.volumes[0].config_map.name
    # The user fixes the cause in the spec (here: the pods now succeed), then asks for the retry.
    cluster.kubectl("patch", "rt", "flaky", f"--namespace={namespace}", "--type=merge",
                    "-p", json.dumps({"spec": {"podAnnotations": kwok("1s")}}))
    retried = rto(cluster, "retry", "flaky", f"--namespace={namespace}")
    assert retried.returncode == 0, retried.stderr
    assert f"flaky: retrying select, from the last checkpoint in {folder}" in retried.stdout
    assert wait_for(lambda: finished(cluster, namespace, "flaky") == "Succeeded" or None, 90,
                    "the retried run to succeed")
    run = status(cluster, namespace, "flaky")
    assert run["outputDir"] == folder and run["stages"]["select"]["retries"] == 1
    assert all(stage["phase"] == "Succeeded" for stage in run["stages"].values())
    watcher.stop()
    assert len(watcher.uids["flaky-select"]) == 2, "the failed Job was replaced once"
    assert cluster.jobs(namespace)["flaky-select"].spec.template.spec.volumes[0].config_map.name != first_plan, \
        "the retried Job mounts the plan of the edited spec"
    assert "StageRetried" in [event.reason for event in cluster.events(namespace, "flaky")]
    again = rto(cluster, "retry", "flaky", f"--namespace={namespace}")
    assert again.returncode == 1 and "has no failed stage (phase Succeeded): nothing to retry" in again.stderr


def test_deleting_a_run_keeps_its_claim_unless_the_spec_says_delete(cluster, namespace, start_operator):
    start_operator()
    cluster.apply(tiny_run("kept", podAnnotations=kwok("1s")), namespace=namespace)
    cluster.apply(tiny_run("dropped", podAnnotations=kwok("1s"), storage={"size": "2Gi", "whenDeleted": "Delete"}),
                  namespace=namespace)
    for name in ("kept", "dropped"):
        assert wait_for(lambda: finished(cluster, namespace, name), 90, f"run {name} to finish") == "Succeeded"
    cluster.kubectl("delete", "rt", "kept", "dropped", f"--namespace={namespace}", "--wait=true", "--timeout=30s")

    def claims() -> set[str]:
        return {claim.metadata.name for claim in cluster.core.list_namespaced_persistent_volume_claim(namespace).items}

    wait_for(lambda: "dropped-data" not in claims(), 60, "the garbage collector to delete dropped-data")
    assert "kept-data" in claims(), "the default whenDeleted: Retain keeps the checkpoints"


def test_jobs_removed_by_their_ttl_at_once_are_not_rerun(cluster, namespace, start_operator):
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    start_operator()
    cluster.apply(tiny_run("ephemeral", ttlSecondsAfterFinished=0, podAnnotations=kwok("1s")), namespace=namespace)
    assert wait_for(lambda: finished(cluster, namespace, "ephemeral"), 90, "the run to finish") == "Succeeded"
    wait_for(lambda: not cluster.jobs(namespace), 30, "the TTL controller to remove the Jobs")
    time.sleep(3)
    watcher.stop()
    assert sorted(watcher.uids) == sorted(f"ephemeral-{stage}" for stage in TINY)
    assert not watcher.duplicates()
    assert status(cluster, namespace, "ephemeral")["phase"] == "Succeeded"


def test_stage_pods_pass_the_restricted_pod_security_standard(cluster, namespace, start_operator):
    """The namespace enforces `restricted`: a pod that breaks it is never created (the Job reports
    FailedCreate), so the run only finishes if every stage pod passes."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    start_operator()
    cluster.apply(tiny_run("hardened", podAnnotations=kwok("1s")), namespace=namespace)
    assert wait_for(lambda: finished(cluster, namespace, "hardened"), 90, "the run to finish") == "Succeeded"
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{RUN_LABEL}=hardened").items
    assert len(pods) == len(TINY)
    for pod in pods:
        assert pod.spec.automount_service_account_token is False
        assert not any(mount.mount_path.startswith("/var/run/secrets") for mount in pod.spec.containers[0].volume_mounts)


def condition(cluster, namespace: str, name: str, kind: str) -> dict:
    return next((item for item in status(cluster, namespace, name).get("conditions") or [] if item["type"] == kind),
                {})


def condition_with(cluster, namespace: str, name: str, kind: str, reason: str, timeout: float = 60) -> dict:
    """The run's ``kind`` condition once it has ``reason``."""
    return wait_for(lambda: condition(cluster, namespace, name, kind).get("reason") == reason
                    and condition(cluster, namespace, name, kind), timeout, f"{kind} {reason} on {name}")


def test_a_child_the_api_server_refuses_is_reported_once_and_created_once_allowed(cluster, namespace,
                                                                                    start_operator):
    cluster.limit(namespace, "no-jobs", {"count/jobs.batch": "0"})
    start_operator()
    cluster.apply(tiny_run("quota", podAnnotations=kwok("1s")), namespace=namespace)
    ready = condition_with(cluster, namespace, "quota", "Ready", "JobForbidden")
    assert ready["status"] == "False" and "quota-select" in ready["message"] and "exceeded quota" in ready["message"]
    time.sleep(8)  # the operator tries again after 1, 2 and 4 s
    assert [event.reason for event in cluster.events(namespace, "quota")].count("JobForbidden") == 1
    assert condition(cluster, namespace, "quota", "Ready")["lastTransitionTime"] == ready["lastTransitionTime"]
    cluster.kubectl("delete", "resourcequota", "no-jobs", f"--namespace={namespace}")
    assert wait_for(lambda: finished(cluster, namespace, "quota"), 120, "the run to finish") == "Succeeded"
    assert condition(cluster, namespace, "quota", "Ready")["status"] == "True"


def test_a_pod_the_job_controller_cannot_create_is_reported_with_its_reason(cluster, namespace, start_operator):
    cluster.limit(namespace, "no-pods", {"pods": "0"})
    start_operator()
    cluster.apply(tiny_run("podless", podAnnotations=kwok("1s")), namespace=namespace)
    stuck = condition_with(cluster, namespace, "podless", "Progressing", "FailedCreate", timeout=90)
    assert stuck["status"] == "False" and "exceeded quota: no-pods" in stuck["message"]
    assert "FailedCreate" in [event.reason for event in cluster.events(namespace, "podless")]


def test_a_failed_rank_restarts_the_whole_multi_node_group_up_to_the_backoff_limit(cluster, namespace,
                                                                                     start_operator):
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    start_operator()
    failure = {"phase": "Failed", "reason": "NCCL timeout on rank 1"}
    cluster.apply({**tiny_run("wide"), "spec": {
        "preset": "2gpu", "gpu": {"type": "A10G"}, "backoffLimit": 1,
        "storage": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}, "stages": {"sft": {"nodes": 2, "gpus": 16}},
        "podAnnotations": kwok("1s", "fail", failure)}}, namespace=namespace)
    assert wait_for(lambda: finished(cluster, namespace, "wide"), 120, "the run to fail") == "Failed"
    watcher.stop()
    stage = status(cluster, namespace, "wide")["stages"]["sft"]
    assert stage["restarts"] == 1 and "NCCL timeout on rank 1" in stage["message"]
    assert len(watcher.uids["wide-sft"]) == 2, "the group ran twice: once, then one restart"
    assert "StageRestarted" in [event.reason for event in cluster.events(namespace, "wide")]


def test_a_volcano_scheduled_multi_node_stage_is_a_gang_or_says_volcano_is_missing(cluster, namespace,
                                                                                      start_operator):
    start_operator()
    gang = {"preset": "2gpu", "gpu": {"type": "A10G"}, "schedulerName": "volcano",
            "storage": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}, "stages": {"sft": {"nodes": 2, "gpus": 16}}}
    cluster.apply({**tiny_run("early"), "spec": gang}, namespace=namespace)
    ready = condition_with(cluster, namespace, "early", "Ready", "PodGroupNotFound")
    assert ready["status"] == "False" and "early-sft" in ready["message"]
    crd = open_crd("scheduling.volcano.sh", "PodGroup", "v1beta1")
    try:
        cluster.apply(crd)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
        cluster.apply({**tiny_run("gang"), "spec": gang}, namespace=namespace)
        group = wait_for(lambda: cluster.custom.get_namespaced_custom_object(
            "scheduling.volcano.sh", "v1beta1", namespace, "podgroups", "gang-sft"), 60, "the PodGroup")
        assert group["spec"]["minMember"] == 2 and group["spec"]["minResources"] == {"nvidia.com/gpu": "16"}
        job = wait_for(lambda: cluster.jobs(namespace).get("gang-sft"), 30, "the stage's Job")
        assert job.spec.template.metadata.annotations["scheduling.k8s.io/group-name"] == "gang-sft"
        assert job.spec.template.spec.scheduler_name == "volcano"
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--ignore-not-found", "--wait=false")


def _play_jobset_controller(cluster, namespace: str, name: str) -> dict:
    """What JobSet's controller does first (the kit runs none): the replicated Job, owned by the
    JobSet, its pods labelled with the JobSet's uid and under its Service's subdomain."""
    jobset = cluster.custom.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace, "jobsets", name)
    (replicated,) = jobset["spec"]["replicatedJobs"]
    ids = {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/jobset-uid": jobset["metadata"]["uid"]}
    job_spec = copy.deepcopy(replicated["template"]["spec"])
    job_spec["template"]["metadata"]["labels"].update(ids)
    job_spec["template"]["spec"]["subdomain"] = name
    cluster.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": f"{name}-{replicated['name']}-0", "labels": {**replicated["template"]["metadata"]["labels"], **ids},
        "ownerReferences": [{"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "name": name,
                             "uid": jobset["metadata"]["uid"], "controller": True}]},
        "spec": job_spec}, namespace=namespace)
    return jobset


def test_with_jobset_installed_a_multi_node_stage_runs_as_a_jobset(cluster, namespace, start_operator):
    crd = open_crd("jobset.x-k8s.io", "JobSet", "v1alpha2")
    try:
        cluster.apply(crd)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
        start_operator()
        result = {**RESULT, "accuracy": 0.61}
        cluster.apply({**tiny_run("set"), "spec": {
            "preset": "2gpu", "gpu": {"type": "A10G"}, "backoffLimit": 2,
            "storage": {"size": "10Gi", "accessModes": ["ReadWriteMany"]}, "stages": {"sft": {"nodes": 2, "gpus": 16}},
            "podAnnotations": kwok("1s", message=result)}}, namespace=namespace)
        wait_for(lambda: cluster.custom.list_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", namespace, "jobsets")["items"], 90, "the sft stage's JobSet")
        jobset = _play_jobset_controller(cluster, namespace, "set-sft")
        assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 2
        assert "set-sft" not in cluster.jobs(namespace), "the JobSet, not the operator, makes the stage's Job"
        assert not cluster.core.list_namespaced_service(namespace).items, "JobSet makes the Service"
        wait_for(lambda: (cluster.jobs(namespace)["set-sft-r-0"].status.succeeded or 0) == 2, 60,
                 "both ranks to finish")
        jobset["status"] = {"restarts": 0, "conditions": [
            {"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "jobset completed",
             "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}
        cluster.custom.replace_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace, "jobsets",
                                                        "set-sft", jobset)
        stage = wait_for(lambda: status(cluster, namespace, "set")["stages"]["sft"].get("phase") == "Succeeded"
                         and status(cluster, namespace, "set")["stages"]["sft"], 30, "sft to succeed")
        assert stage["accuracy"] == 0.61, "the result is read from rank 0's termination message"
        assert wait_for(lambda: cluster.jobs(namespace).get("set-rl"), 30, "the next stage's Job")
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--ignore-not-found", "--wait=false")


def test_a_stage_past_its_deadline_fails_with_deadline_exceeded(cluster, namespace, start_operator):
    start_operator()
    cluster.apply(tiny_run("slow", activeDeadlineSeconds=2, podAnnotations=kwok("60s")), namespace=namespace)
    assert wait_for(lambda: finished(cluster, namespace, "slow"), 60, "the run to fail") == "Failed"
    assert status(cluster, namespace, "slow")["stages"]["select"]["reason"] == "DeadlineExceeded"


def test_a_termination_message_with_nan_and_strings_is_recorded_without_them(cluster, namespace, start_operator):
    """The API server's JSON decoder refuses NaN: one such value used to freeze the run's status."""
    start_operator()
    annotations = {**kwok("1s"), "kwok.x-k8s.io/termination-message":
                   '{"phase": "Succeeded", "accuracy": NaN, "metrics": {"loss": "high", "reward": 0.5}}'}
    cluster.apply(tiny_run("garbled", podAnnotations=annotations), namespace=namespace)
    assert wait_for(lambda: finished(cluster, namespace, "garbled"), 90, "the run to finish") == "Succeeded"
    for stage in status(cluster, namespace, "garbled")["stages"].values():
        assert "accuracy" not in stage and stage["metrics"] == {"reward": 0.5}
        assert stage["message"] == "succeeded; left out of the trainer's result: accuracy, metrics.loss"


def test_malformed_runs_are_refused_by_the_api_server_or_by_the_operator_naming_the_field(cluster, namespace,
                                                                                          start_operator):
    """The suite of tests/malformed.py on the real API server: what its CRD schema refuses, it
    refuses naming the field; every other case is stored and the operator refuses it in the run's
    Ready condition, naming the same field as ``rto validate``."""
    from malformed import CASES

    start_operator()
    stored = {}
    for case in CASES:
        resource = copy.deepcopy(case.resource)
        if not case.path.startswith(("metadata", "apiVersion", "kind")):
            resource["metadata"]["name"] = case.id  # one run per case
        created = cluster.kubectl_as(cluster.kubeconfig, "create", "-f", "-", f"--namespace={namespace}",
                                     input=yaml.safe_dump(resource))
        if created.returncode == 0:
            stored[resource["metadata"]["name"]] = case
            continue
        message = re.sub(r"\[(\d+)\]", r".\1", created.stderr)  # spec.tolerations[0] -> spec.tolerations.0
        # kubectl itself refuses an unknown type or a namespace other than the one it is given.
        by_kubectl = case.path in ("apiVersion", "kind", "metadata.namespace") and message.startswith("error: ")
        assert case.path in message or by_kubectl, \
            f"{case.id}: the API server refused without naming {case.path}:\n{created.stderr}"
    refused_by_server = len(CASES) - len(stored)
    print(f"\n{refused_by_server} of {len(CASES)} malformed runs refused by the API server, "
          f"{len(stored)} stored and refused by the operator")
    assert refused_by_server >= 15 and stored
    for name, case in stored.items():
        ready = wait_for(lambda: condition(cluster, namespace, name, "Ready").get("status") == "False"
                         and condition(cluster, namespace, name, "Ready"), 60, f"the operator to refuse {name}")
        assert ready["reason"] in ("InvalidSpec", "PlanFailed") and f"{case.path}:" in ready["message"], \
            (case.id, ready)
    assert not cluster.jobs(namespace), "nothing of a refused run was created"


def test_tolerations_and_affinity_get_the_api_servers_verdict_at_admission(cluster, namespace):
    """Each case of tests/pod_template_cases.py inside a Job's pod template on the real API server:
    what it refuses, admission refuses (so no stage Job is ever refused for them), and what admission
    admits, it admits."""
    from malformed import BASE
    from pod_template_cases import CASES
    from reasoning_operator.admission import Rejected, admit

    disagreements = []
    for case in CASES:
        pod = {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "trainer:1"}],
               case.field: case.value}
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
               "spec": {"template": {"spec": pod}}}
        created = cluster.kubectl_as(cluster.kubeconfig, "create", "--dry-run=server", "-f", "-",
                                     f"--namespace={namespace}", input=json.dumps(job))
        try:
            admit({**BASE, "spec": {**BASE["spec"], case.field: case.value}})
            admitted = True
        except Rejected:
            admitted = False
        server_admits = created.returncode == 0
        if admitted != server_admits and not (case.stricter and server_admits):
            disagreements.append(f"{case.id}: admission {admitted}, API server {server_admits} {created.stderr}")
    assert not disagreements, "\n".join(disagreements)


def _kubectl(cluster) -> list[str]:
    binary = cluster.kit_state / "bin" / "kubectl" if cluster.kit_state else "kubectl"
    return [str(binary), f"--kubeconfig={cluster.kubeconfig}"]


def _read_until(process: subprocess.Popen, word: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if word in line.split():
            return lines
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError("kubectl get -w ended:\n" + "".join(lines))


def _kopf_peering_crds() -> list[dict]:
    """kopf's own peering CRDs, as its docs install them."""
    def crd(kind: str, plural: str, scope: str) -> dict:
        return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {"group": "kopf.dev", "scope": scope,
                         "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                         "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                             "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}

    return [crd("KopfPeering", "kopfpeerings", "Namespaced"), crd("ClusterKopfPeering", "clusterkopfpeerings",
                                                                  "Cluster")]


