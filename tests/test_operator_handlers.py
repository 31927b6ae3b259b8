"""The operator's handlers against kmock's Kubernetes emulator, with kopf running for real.

The tests play the user (apply, patch), the Job controller and the kubelet (pods, Job
conditions, termination messages) and check what the operator creates and reports.
"""

import asyncio
import json

import kopf
import pytest
from kube_emulator import JOBS, PODS, ApiServerEmulator, Cluster, Operator, eventually, finish_stage

from conftest import resource
from reasoning_operator.handlers import check_admission
from reasoning_trainer.planner import plan_run
from reasoning_trainer.schema import validate_spec

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

STORAGE = {"storage": {"size": "100Gi"}, "hfTokenSecret": {"name": "hf", "key": "token"}}


def run_resource(name: str, spec: dict) -> dict:
    merged = {key: value for key, value in {**STORAGE, **spec}.items() if value is not None}
    return resource(merged, name)


@pytest.fixture
async def cluster(kmock):
    return Cluster(kmock)


@pytest.fixture
async def operator(cluster):
    running = Operator(cluster)
    await running.start()
    yield running
    await running.stop()


def stage_phase(cluster, name, stage):
    return cluster.status(name).get("stages", {}).get(stage, {}).get("phase")


def condition(cluster, name, kind):
    return next((c for c in cluster.status(name).get("conditions", []) if c["type"] == kind), None)


def condition_for(cluster, name, kind, reason):
    """The ``kind`` condition once its reason is ``reason``; None before (or before it exists)."""
    found = condition(cluster, name, kind)
    return found if found and found["reason"] == reason else None


def events(cluster, reason):
    return [event for event in cluster.events() if event["reason"] == reason]


@pytest.mark.parametrize("preset", ["fast", "2gpu", "full"])
async def test_each_stage_becomes_a_job_with_the_planned_gpus_and_8bit_until_the_run_succeeds(
        cluster, operator, preset):
    name = f"run-{preset}"
    await cluster.apply(run_resource(name, {"preset": preset}))
    plan = plan_run(validate_spec({**STORAGE, "preset": preset}))
    stages = list(plan.stages)
    for stage in stages:
        job_name = f"{name}-{stage}"
        job = await eventually(lambda: cluster.jobs().get(job_name))
        planned = plan.stages[stage]
        container = job["spec"]["template"]["spec"]["containers"][0]
        gpus = planned.gpus // planned.nodes
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        eight_bit = [role for role, on in planned.load_in_8bit.items() if on]
        assert job["metadata"]["annotations"]["reasoning.dev/load-in-8bit"] == (",".join(eight_bit) or "none")
        assert job["metadata"]["labels"]["reasoning.dev/run"] == name
        assert job["metadata"]["labels"]["reasoning.dev/stage"] == stage
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("ReasoningTraining", name,
                                                                cluster.run(name)["metadata"]["uid"])
        plan_file = json.loads(mounted_plan(cluster, job_name))
        assert plan_file["plan"]["stages"][stage]["gpus"] == planned.gpus
        # Every other stage waits for this one.
        assert set(cluster.jobs()) == {f"{name}-{done}" for done in stages[:stages.index(stage) + 1]}
        await finish_stage(cluster, job_name, accuracy=0.5 if stage == "eval" else None)
        await eventually(lambda: stage_phase(cluster, name, stage) == "Succeeded")
    status = await eventually(lambda: cluster.status(name) if cluster.status(name)["phase"] == "Succeeded" else None)
    assert status["accuracy"] == "50.0%"
    assert status["stages"]["eval"]["checkpoint"] == "/data/x/models/eval"
    assert status["stages"][stages[0]]["metrics"] == {"loss": 0.25}
    assert condition(cluster, name, "Succeeded")["status"] == "True"
    assert condition(cluster, name, "Ready")["status"] == "True"
    await eventually(lambda: len(events(cluster, "StageSucceeded")) == len(stages) and events(cluster, "RunSucceeded"))


async def test_stage_pod_spec_mounts_plan_volume_shm_and_reads_the_token_from_its_secret(cluster, operator):
    spec = {"preset": "fast", "nodeSelector": {"pool": "gpu"}, "priorityClassName": "training",
            "schedulerName": "volcano", "tolerations": [{"key": "team", "operator": "Exists"}],
            "ttlSecondsAfterFinished": 600, "gpu": {"type": "A10G", "productLabel": "NVIDIA-A10G"}}
    await cluster.apply(run_resource("pods", spec))
    job = await eventually(lambda: cluster.jobs().get("pods-sft"))
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["rto", "train", "sft", "--plan", "/etc/rto/plan.json"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in container["env"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9400}]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts == {"plan": "/etc/rto", "data": "/data", "dshm": "/dev/shm"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "pods-data"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A10G"}
    assert {"key": "team", "operator": "Exists"} in pod["tolerations"]
    assert (pod["priorityClassName"], pod["schedulerName"]) == ("training", "volcano")
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "reasoning-trainer"
    claim = cluster.objects("persistentvolumeclaims")["pods-data"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"


async def test_failed_pod_is_retried_then_the_run_fails_with_the_trainers_reason(cluster, operator):
    await cluster.apply(run_resource("flaky", {"preset": "fast", "backoffLimit": 1}))
    job = await eventually(lambda: cluster.jobs().get("flaky-sft"))
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    first = cluster.start_pod("flaky-sft")
    await eventually(lambda: stage_phase(cluster, "flaky", "sft") == "Running")
    cluster.finish_pod(first, 1, json.dumps({"stage": "sft", "phase": "Failed", "reason": "CUDA error: boom"}))
    cluster.count_failure("flaky-sft")
    cluster.start_pod("flaky-sft")
    await eventually(lambda: cluster.status("flaky")["stages"]["sft"]["attempts"] == 2)
    await eventually(lambda: events(cluster, "StageRetrying"))
    assert cluster.status("flaky")["phase"] == "Running"
    second = [name for name in cluster.objects("pods") if name != first][0]
    cluster.finish_pod(second, 1, json.dumps({"stage": "sft", "phase": "Failed", "reason": "CUDA error: boom"}))
    cluster.count_failure("flaky-sft")
    cluster.fail_job("flaky-sft")
    await eventually(lambda: cluster.status("flaky")["phase"] == "Failed")
    failed = condition(cluster, "flaky", "Failed")
    assert failed["status"] == "True" and "CUDA error: boom" in failed["message"]
    assert "CUDA error: boom" in cluster.status("flaky")["stages"]["sft"]["message"]
    failures = await eventually(lambda: events(cluster, "StageFailed"))
    assert [event["type"] for event in failures] == ["Warning"]
    await asyncio.sleep(0.5)
    assert set(cluster.jobs()) == {"flaky-sft"}  # no next stage after a failure


async def test_an_oom_kill_is_reported_from_the_kubelets_reason(cluster, operator):
    await cluster.apply(run_resource("oom", {"preset": "fast", "backoffLimit": 0}))
    await eventually(lambda: cluster.jobs().get("oom-sft"))
    pod = cluster.start_pod("oom-sft")
    cluster.finish_pod(pod, 137, "", reason="OOMKilled")
    cluster.fail_job("oom-sft")
    await eventually(lambda: cluster.status("oom")["phase"] == "Failed")
    assert "OOMKilled (exit code 137)" in cluster.status("oom")["stages"]["sft"]["message"]


@pytest.mark.parametrize("spec, path", [
    ({"preset": "fast", "stages": {"sft": {"learningRate": -1}}}, "spec.stages.sft.learningRate"),
    ({"preset": "fast", "storage": None}, "spec.storage"),
    ({"preset": "fast", "gpu": {"memory": "4Gi"}}, "spec.stages.sft"),
])
async def test_invalid_spec_sets_ready_false_with_the_field_and_creates_nothing(cluster, operator, spec, path):
    await cluster.apply(run_resource("bad", spec))
    ready = await eventually(lambda: condition(cluster, "bad", "Ready"))
    assert ready["status"] == "False"
    assert ready["reason"] in ("InvalidSpec", "PlanFailed")
    assert path in ready["message"]
    warning = await eventually(lambda: events(cluster, ready["reason"]))
    assert warning[0]["type"] == "Warning" and path in warning[0]["message"]
    await asyncio.sleep(0.5)
    assert cluster.jobs() == {}
    assert cluster.status("bad")["phase"] == "Pending"
    # Fixing the spec starts the run.
    await cluster.patch_spec("bad", {"preset": "fast", "storage": {"size": "1Gi"}, "gpu": {"memory": "24Gi"},
                                     "stages": {"sft": {"learningRate": 1e-5}}})
    await eventually(lambda: cluster.jobs().get("bad-sft"))
    # The pass creates the Job, then writes the status.
    await eventually(lambda: condition(cluster, "bad", "Ready")["status"] == "True")


async def test_suspend_removes_the_stage_job_and_resume_recreates_it(cluster, operator):
    await cluster.apply(run_resource("pause", {"preset": "fast"}))
    await eventually(lambda: cluster.jobs().get("pause-sft"))
    cluster.start_pod("pause-sft")
    await eventually(lambda: stage_phase(cluster, "pause", "sft") == "Running")
    await cluster.patch_spec("pause", {"suspend": True})
    await eventually(lambda: "pause-sft" not in cluster.jobs())
    await eventually(lambda: cluster.status("pause")["phase"] == "Suspended")
    assert condition(cluster, "pause", "Suspended")["status"] == "True"
    assert stage_phase(cluster, "pause", "sft") == "Suspended"
    await asyncio.sleep(0.5)
    assert "pause-sft" not in cluster.jobs()  # stays down while suspended
    await cluster.patch_spec("pause", {"suspend": False})
    await eventually(lambda: cluster.jobs().get("pause-sft"))
    await eventually(lambda: cluster.status("pause")["phase"] != "Suspended")
    assert condition(cluster, "pause", "Suspended")["status"] == "False"
    await eventually(lambda: events(cluster, "Suspended") and events(cluster, "Resumed"))


async def test_restarting_the_operator_mid_stage_creates_no_duplicate(cluster, operator):
    await cluster.apply(run_resource("steady", {"preset": "fast"}))
    await eventually(lambda: cluster.jobs().get("steady-sft"))
    cluster.start_pod("steady-sft")
    await eventually(lambda: stage_phase(cluster, "steady", "sft") == "Running")
    await operator.stop()
    await operator.start()
    await asyncio.sleep(1.0)
    assert cluster.job_creations("steady-sft") == 1
    await finish_stage(cluster, "steady-sft")
    await eventually(lambda: cluster.jobs().get("steady-rl"))
    assert cluster.job_creations("steady-sft") == 1


async def test_multi_node_stage_is_an_indexed_job_with_a_headless_service_and_torchrun_env(cluster, operator):
    spec = {"preset": "2gpu", "gpu": {"memory": "80Gi", "maxPerNode": 8},
            "storage": {"size": "1Ti", "accessModes": ["ReadWriteMany"]}, "stages": {"sft": {"nodes": 2, "gpus": 16}}}
    await cluster.apply(run_resource("wide", spec))
    job = await eventually(lambda: cluster.jobs().get("wide-sft"))
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "wide-sft"
    service = cluster.objects("services")["wide-sft"]
    assert service["spec"]["clusterIP"] == "None"
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["command"][0] == "torchrun" and "--node-rank=$(NODE_RANK)" in container["command"]
    env = {item["name"]: item for item in container["env"]}
    assert env["NNODES"]["value"] == "2" and env["NPROC_PER_NODE"]["value"] == "8"
    assert env["MASTER_ADDR"]["value"] == "wide-sft-0.wide-sft.default.svc"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]


async def test_kueue_queue_name_labels_the_job_and_creates_it_suspended(cluster, operator):
    await cluster.apply(run_resource("queued", {"preset": "fast", "queueName": "team-a"}))
    job = await eventually(lambda: cluster.jobs().get("queued-sft"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    await eventually(lambda: "Kueue" in cluster.status("queued")["stages"]["sft"]["message"])
    assert cluster.status("queued")["phase"] == "Pending"


async def test_image_pull_errors_and_unschedulable_pods_surface_as_conditions(cluster, operator):
    await cluster.apply(run_resource("stuck", {"preset": "fast"}))
    await eventually(lambda: cluster.jobs().get("stuck-sft"))
    pod = cluster.start_pod("stuck-sft", phase="Pending", containerStatuses=[
        {"name": "trainer", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                  "message": 'Back-off pulling image "nope:1"'}}}])
    progressing = await eventually(lambda: condition_for(cluster, "stuck", "Progressing", "ImagePullBackOff"))
    assert progressing["status"] == "False" and "nope:1" in progressing["message"]
    pull_errors = await eventually(lambda: events(cluster, "ImagePullBackOff"))
    assert pull_errors[0]["type"] == "Warning"
    cluster.patch_object(PODS, pod,
        {"status": {"containerStatuses": None, "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
             "lastTransitionTime": "2020-01-01T00:00:00Z"}]}})
    progressing = await eventually(lambda: condition_for(cluster, "stuck", "Progressing", "Unschedulable"))
    assert "Insufficient nvidia.com/gpu" in progressing["message"]


async def test_spec_change_while_running_applies_to_later_stages_only(cluster, operator):
    await cluster.apply(run_resource("change", {"preset": "fast"}))
    await eventually(lambda: cluster.jobs().get("change-sft"))
    frozen = mounted_plan(cluster, "change-sft")
    await cluster.patch_spec("change", {"stages": {"eval": {"k": 3}}})
    await eventually(lambda: events(cluster, "SpecChanged"))
    assert "rl" in events(cluster, "SpecChanged")[0]["message"]
    assert mounted_plan(cluster, "change-sft") == frozen
    await finish_stage(cluster, "change-sft")
    await eventually(lambda: cluster.jobs().get("change-rl"))
    await finish_stage(cluster, "change-rl")
    await eventually(lambda: cluster.jobs().get("change-eval"))
    later = json.loads(mounted_plan(cluster, "change-eval"))
    assert later["spec"]["stages"]["eval"]["k"] == 3


async def test_a_finished_job_removed_by_its_ttl_is_not_rerun(cluster, operator):
    await cluster.apply(run_resource("ttl", {"preset": "fast", "ttlSecondsAfterFinished": 0}))
    await eventually(lambda: cluster.jobs().get("ttl-sft"))
    await finish_stage(cluster, "ttl-sft")
    await eventually(lambda: cluster.jobs().get("ttl-rl"))
    cluster.delete_object(JOBS, "ttl-sft")
    await asyncio.sleep(0.6)
    assert cluster.job_creations("ttl-sft") == 1
    assert cluster.status("ttl")["stages"]["sft"]["phase"] == "Succeeded"
    assert cluster.status("ttl")["stages"]["sft"]["checkpoint"] == "/data/x/models/sft"


async def test_operator_metrics_count_runs_by_phase_and_stage_transitions(cluster, operator):
    await cluster.apply(run_resource("counted", {"preset": "fast"}))
    await eventually(lambda: cluster.jobs().get("counted-sft"))
    await finish_stage(cluster, "counted-sft")
    await eventually(lambda: stage_phase(cluster, "counted", "sft") == "Succeeded")
    registry = operator.memo.operator.metrics.registry
    await eventually(lambda: registry.get_sample_value("rto_operator_runs", {"phase": "Running"}) == 1)
    transition = {"namespace": "default", "run": "counted", "stage": "sft", "phase": "Succeeded"}
    # The status patch can reach the cluster before the reconcile that wrote it counts the transition.
    await eventually(lambda: registry.get_sample_value("rto_operator_stage_transitions_total", transition) is not None)
    assert registry.get_sample_value("rto_operator_stage_transitions_total", transition) == 1
    assert registry.get_sample_value("rto_operator_stage_duration_seconds_count", {"stage": "sft"}) == 1
    assert registry.get_sample_value("rto_operator_handler_duration_seconds_count", {"handler": "reconcile"}) > 0



def mounted_plan(cluster, job_name: str) -> str:
    """The plan file a stage Job's pods read: the ConfigMap its pod template mounts."""
    volume = cluster.jobs()[job_name]["spec"]["template"]["spec"]["volumes"][0]
    return cluster.objects("configmaps")[volume["configMap"]["name"]]["data"]["plan.json"]

def test_the_webhook_rejects_what_the_reconciler_would_with_the_field_path():
    with pytest.raises(kopf.AdmissionError, match="spec.stages.sft.epochs"):
        check_admission(run_resource("hook", {"preset": "fast", "stages": {"sft": {"epochs": 0}}}))
    check_admission(run_resource("hook", {"preset": "fast"}))
