"""The operator's pure core: manifests, status decisions, admission and settings, with plain dicts."""

from datetime import datetime, timedelta, timezone

import pytest

from conftest import resource
from reasoning_operator.admission import Rejected, admit
from reasoning_operator.config import OperatorConfig
from reasoning_operator.desired import Run, stage_children, volume_claim
from reasoning_operator.handlers import merge_patch
from reasoning_operator.progress import Observed, decide, load_status, refuse_child
from reasoning_trainer.planner import plan_run
from reasoning_trainer.schema import validate_spec

RUN = Run("demo", "team", "0123456789abcdef")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def children(spec_fields: dict, stage: str) -> dict[str, dict]:
    spec = validate_spec(spec_fields)
    made = stage_children(RUN, spec, plan_run(spec), stage, "trainer:1", OperatorConfig())
    return {child["kind"]: child for child in made}


def test_multi_gpu_training_on_one_node_runs_under_torchrun_with_one_process_per_gpu():
    job = children({"preset": "full", "storage": {"size": "1Ti"}}, "sft")["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]
    assert container["command"][3:] == ["-m", "reasoning_trainer.cli", "train", "sft", "--plan", "/etc/rto/plan.json"]
    assert job["metadata"]["annotations"]["reasoning.dev/zero-stage"] == "2"
    assert "completionMode" not in job["spec"]


def test_a_cpu_stage_asks_for_no_gpu_and_an_existing_claim_is_used_as_is():
    spec = validate_spec({"preset": "tiny", "storage": {"existingClaim": "shared"}})
    made = {child["kind"]: child for child in stage_children(RUN, spec, plan_run(spec), "sft", "t:1",
                                                             OperatorConfig())}
    pod = made["Job"]["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert "tolerations" not in pod
    assert pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == "shared"
    assert pod["volumes"][2]["emptyDir"]["sizeLimit"] == "1Gi"
    assert volume_claim(RUN, spec) is None
    assert '"outputDir": "/data/demo-01234567"' in made["ConfigMap"]["data"]["plan.json"]


def test_cpu_and_memory_from_the_spec_sit_beside_the_planned_gpus():
    resources = {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "96Gi", "ephemeral-storage": "50Gi"}}
    job = children({"preset": "fast", "storage": {"size": "1Ti"}, "resources": resources}, "sft")["Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1},
        "limits": {"memory": "96Gi", "ephemeral-storage": "50Gi", "nvidia.com/gpu": 1}}
    tiny = children({"preset": "tiny", "storage": {"size": "1Gi"}, "resources": {"limits": {"memory": "4Gi"}}}, "sft")
    assert tiny["Job"]["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"memory": "4Gi"}}


def test_an_admitted_affinity_reaches_the_stage_pods_as_written():
    from pod_template_cases import CASES

    for case in CASES:
        if case.path is None and case.field == "affinity" and case.value:
            job = children({"preset": "fast", "storage": {"size": "1Ti"}, "affinity": case.value}, "sft")["Job"]
            assert job["spec"]["template"]["spec"]["affinity"] == case.value, case.id


def test_tracking_credentials_reach_the_trainer_from_their_secrets_only():
    job = children({"preset": "fast", "storage": {"size": "1Ti"}, "tracking": {
        "mlflow": {"trackingUri": "https://mlflow.example.com", "tokenSecret": {"name": "mlflow"}},
        "wandb": {"project": "reasoning", "apiKeySecret": {"name": "wandb", "key": "api-key"}}}}, "sft")["Job"]
    env = {item["name"]: item for item in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_TOKEN"] == {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "mlflow", "key": "token"}}}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}


def test_stage_pods_can_write_the_volume_and_keep_serving_their_final_metrics():
    config = OperatorConfig(metrics_linger_seconds=60)
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Ti"}})
    job = next(child for child in stage_children(RUN, spec, plan_run(spec), "sft", "t:1", config)
               if child["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 1000  # the image's user
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["RTO_METRICS_LINGER_SECONDS"] == "60"


def test_operator_metrics_keep_failed_stages_until_the_run_is_deleted():
    from reasoning_operator.metrics import OperatorMetrics
    from reasoning_trainer.schema.run import RunStatus

    metrics = OperatorMetrics()
    running = RunStatus.model_validate({"phase": "Running", "stages": {"sft": {"phase": "Running"}}})
    failed = RunStatus.model_validate({"phase": "Failed", "stages": {"sft": {"phase": "Failed"}}})
    metrics.observe("team", "demo", RunStatus(), running)
    metrics.observe("team", "demo", running, failed)
    sample = metrics.registry.get_sample_value
    run = {"namespace": "team", "run": "demo", "stage": "sft"}
    assert sample("rto_operator_stage_failed", run) == 1
    assert sample("rto_operator_stage_transitions_total", {**run, "phase": "Failed"}) == 1
    assert sample("rto_operator_runs", {"phase": "Failed"}) == 1
    metrics.forget("team", "demo")
    assert sample("rto_operator_stage_failed", run) is None
    assert sample("rto_operator_stage_transitions_total", {**run, "phase": "Running"}) is None
    assert sample("rto_operator_runs", {"phase": "Failed"}) == 0


def pending_job(stage: str) -> dict:
    return {"metadata": {"name": f"demo-{stage}", "uid": "job-uid"}, "spec": {}, "status": {"active": 1}}


def unschedulable_pod(since: datetime) -> dict:
    return {"metadata": {"name": "demo-sft-abc"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU",
         "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]}}


def progressing(decision) -> dict:
    return next(c for c in decision.status_patch()["conditions"] if c["type"] == "Progressing")


def test_an_unschedulable_pod_is_reported_only_after_the_configured_wait():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    plan = plan_run(spec)
    fresh = Observed({"sft": pending_job("sft")}, {"sft": [unschedulable_pod(NOW - timedelta(seconds=30))]}, NOW)
    assert progressing(decide(RUN, 1, spec, plan, {}, fresh, stuck_after=600))["reason"] == "StagePending"
    old = Observed({"sft": pending_job("sft")}, {"sft": [unschedulable_pod(NOW - timedelta(minutes=20))]}, NOW)
    stuck = progressing(decide(RUN, 1, spec, plan, {}, old, stuck_after=600))
    assert (stuck["status"], stuck["reason"]) == ("False", "Unschedulable")
    assert "20 min" in stuck["message"] and "no GPU" in stuck["message"]


def test_a_log_tail_termination_message_becomes_the_failure_reason():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    job = {"metadata": {"name": "demo-sft", "uid": "u"}, "spec": {},
           "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {
        "terminated": {"exitCode": 1, "reason": "Error", "message": "loading\nRuntimeError: CUDA out of memory\n"}}}]}}
    decision = decide(RUN, 1, spec, plan_run(spec), {}, Observed({"sft": job}, {"sft": [pod]}, NOW), 600)
    status = decision.status_patch()
    assert status["phase"] == "Failed"
    assert status["stages"]["sft"]["message"].startswith("Error (exit code 1): RuntimeError: CUDA out of memory")
    assert decision.create is None


def succeeded_pod(message: str) -> dict:
    return {"metadata": {"name": "p"}, "status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "trainer", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}]}}


def test_a_termination_message_with_nan_or_strings_still_records_the_stage_with_what_fits():
    import json

    from reasoning_trainer.stage_result import StageResult, termination_message

    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    job = {"metadata": {"name": "demo-sft", "uid": "u"}, "status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}
    garbled = '{"accuracy": NaN, "durationSeconds": "fast", "metrics": {"loss": Infinity, "reward": 0.5}}'
    decision = decide(RUN, 1, spec, plan_run(spec), {}, Observed({"sft": job}, {"sft": [succeeded_pod(garbled)]}, NOW),
                      600)
    stage = decision.status_patch()["stages"]["sft"]
    assert stage["phase"] == "Succeeded" and "accuracy" not in stage and stage["metrics"] == {"reward": 0.5}
    assert stage["message"] == ("succeeded; left out of the trainer's result: durationSeconds, accuracy, "
                                "metrics.loss")
    json.dumps(decision.status_patch(), allow_nan=False)  # what the API server's decoder accepts
    # The trainer's side: strict JSON, the diverged values named.
    written = termination_message("sft", "Succeeded", 3.0, StageResult(accuracy=float("nan"),
                                                                        metrics={"loss": float("inf"), "kl": 0.1}))
    assert json.loads(written, parse_constant=lambda name: pytest.fail(f"{name} in {written}"))["nonFinite"] == [
        "accuracy", "metrics.loss"]
    stage = decide(RUN, 1, spec, plan_run(spec), {}, Observed({"sft": job}, {"sft": [succeeded_pod(written)]}, NOW),
                   600).status_patch()["stages"]["sft"]
    assert stage["metrics"] == {"kl": 0.1} and stage["message"].endswith("accuracy, metrics.loss")


def test_a_refused_child_is_recorded_once_and_a_later_pass_clears_it():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    plan, nothing = plan_run(spec), Observed({}, {}, NOW)
    decision = decide(RUN, 1, spec, plan, {}, nothing, 600)
    assert decision.create == "sft"
    refuse_child(decision, load_status({}), 1, "Job", "demo-sft", "Forbidden",
                 'jobs.batch "demo-sft" is forbidden: exceeded quota: jobs', NOW)
    stored = decision.status_patch()
    conditions = {condition["type"]: condition for condition in stored["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "JobForbidden")
    assert "exceeded quota" in conditions["Ready"]["message"] and "job" not in stored["stages"]["sft"]
    assert [event.reason for event in decision.events] == ["JobForbidden"]
    # The same refusal on the next try (a minute later): no change to write, no second event.
    again = decide(RUN, 1, spec, plan, stored, Observed({}, {}, NOW + timedelta(minutes=1)), 600)
    refuse_child(again, load_status(stored), 1, "Job", "demo-sft", "Forbidden",
                 'jobs.batch "demo-sft" is forbidden: exceeded quota: jobs', NOW + timedelta(minutes=1))
    assert merge_patch(stored, again.status_patch(stored)) == {} and again.events == []
    # The quota is lifted: the Job is created and Ready turns True again.
    cleared = decide(RUN, 1, spec, plan, stored, Observed({}, {}, NOW + timedelta(minutes=2)), 600)
    ready = next(condition for condition in cleared.status_patch()["conditions"] if condition["type"] == "Ready")
    assert ready["status"] == "True" and cleared.create == "sft"


def test_a_failed_run_is_not_ready_and_status_fields_of_a_newer_operator_survive():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    job = {"metadata": {"name": "demo-sft", "uid": "u"}, "status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    stored = {"retries": {"sft": 2}, "phase": "Running"}
    decision = decide(RUN, 1, spec, plan_run(spec), stored, Observed({"sft": job}, {}, NOW), 600)
    ready = next(condition for condition in decision.status_patch()["conditions"] if condition["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RunFailed")
    assert merge_patch(stored, decision.status_patch(stored)).get("retries", "kept") == "kept"


FAILED_SFT = {"phase": "Failed", "stages": {"sft": {"phase": "Failed", "job": "demo-sft", "attempts": 3,
                                                   "reason": "BackoffLimitExceeded", "message": "OOM"}}}
FAILED_JOB = {"metadata": {"name": "demo-sft", "uid": "old"}, "status": {"failed": 3, "conditions": [
    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}


def test_a_failed_stage_reruns_only_when_a_retry_is_asked_for_and_its_old_job_is_gone_first():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    plan, asked = plan_run(spec), Run("demo", "team", "0123456789abcdef", retry="1")
    # Not asked: the failed stage stays failed, whatever its Job does.
    for jobs in ({"sft": FAILED_JOB}, {}):
        decision = decide(RUN, 1, spec, plan, FAILED_SFT, Observed(jobs, {}, NOW), 600)
        assert (decision.create, decision.remove, decision.status.phase) == (None, None, "Failed")
    # Asked, with the failed Job still there: it is removed first, and the stage waits.
    waiting = decide(asked, 1, spec, plan, FAILED_SFT, Observed({"sft": FAILED_JOB}, {}, NOW), 600)
    assert (waiting.remove, waiting.create, waiting.status.retried) == ("sft", None, None)
    # Gone: the stage starts again, counted, and the request is consumed.
    retried = decide(asked, 1, spec, plan, FAILED_SFT, Observed({}, {}, NOW), 600)
    stage = retried.status.stages["sft"]
    assert (retried.create, stage.phase, stage.retries, retried.status.retried) == ("sft", "Pending", 1, "1")
    assert retried.status.phase == "Pending" and "StageRetried" in [event.reason for event in retried.events]
    # The same annotation later (the retry failed again) asks for nothing more.
    stored = {**retried.status_patch(), "phase": "Failed", "stages": FAILED_SFT["stages"]}
    assert decide(asked, 1, spec, plan, stored, Observed({}, {}, NOW), 600).create is None


def test_a_retry_asked_while_nothing_failed_is_used_up_and_reruns_no_later_failure():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    asked = Run("demo", "team", "0123456789abcdef", retry="early")
    decision = decide(asked, 1, spec, plan_run(spec), RUNNING_SFT, Observed({"sft": pending_job("sft")}, {}, NOW), 600)
    assert decision.status.retried == "early" and "RetryIgnored" in [event.reason for event in decision.events]


def test_the_plan_a_job_mounts_is_named_by_its_content_and_the_claim_outlives_the_run_by_default():
    fast = {"preset": "fast", "storage": {"size": "1Gi"}}
    first, edited = children(fast, "sft"), children({**fast, "podLabels": {"team": "a"}}, "sft")
    for made in (first, edited):
        mounted = made["Job"]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
        assert mounted == made["ConfigMap"]["metadata"]["name"] and mounted.startswith("demo-sft-")
    assert first["ConfigMap"]["metadata"]["name"] != edited["ConfigMap"]["metadata"]["name"]
    assert "ownerReferences" not in volume_claim(RUN, validate_spec(fast))["metadata"]
    deleted_with_run = volume_claim(RUN, validate_spec({"preset": "fast", "storage": {"size": "1Gi",
                                                                                      "whenDeleted": "Delete"}}))
    assert deleted_with_run["metadata"]["ownerReferences"][0]["uid"] == RUN.uid


def test_a_stage_disabled_while_it_runs_is_stopped_and_recorded_stopped_never_succeeded():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}, "stages": {"sft": {"enabled": False}}})
    plan = plan_run(spec)
    stored = {"phase": "Running", "stages": {**RUNNING_SFT["stages"], "rl": {"phase": "Pending"}}}
    stopping = decide(RUN, 2, spec, plan, stored, Observed({"sft": pending_job("sft")}, {}, NOW), 600)
    assert (stopping.remove, stopping.create, stopping.status.phase) == ("sft", None, "Running")
    stopped = decide(RUN, 2, spec, plan, stopping.status_patch(), Observed({}, {}, NOW), 600)
    assert stopped.status.stages["sft"].phase == "Stopped" and stopped.create == "rl"
    assert "StageStopped" in [event.reason for event in stopped.events]


WIDE = {"preset": "2gpu", "gpu": {"memory": "80Gi"}, "backoffLimit": 3, "queueName": "team-a",
        "storage": {"size": "1Ti", "accessModes": ["ReadWriteMany"]}, "stages": {"sft": {"nodes": 2, "gpus": 16}}}


def test_with_jobset_installed_a_multi_node_stage_is_a_jobset_that_restarts_the_group():
    spec = validate_spec(WIDE)
    made = stage_children(RUN, spec, plan_run(spec), "sft", "trainer:1", OperatorConfig(), jobsets=True)
    assert [child["kind"] for child in made] == ["ConfigMap", "JobSet"], "JobSet makes the Service itself"
    jobset = made[1]
    assert jobset["metadata"]["name"] == "demo-sft" and jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    assert jobset["spec"]["suspend"] is True, "Kueue admits the JobSet as a whole"
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 3
    assert jobset["spec"]["failurePolicy"]["rules"][0]["onJobFailureReasons"] == ["PodFailurePolicy",
                                                                                   "DeadlineExceeded"]
    (replicated,) = jobset["spec"]["replicatedJobs"]
    child = replicated["template"]
    assert "kueue.x-k8s.io/queue-name" not in child["metadata"]["labels"] and "suspend" not in child["spec"]
    assert (child["spec"]["completions"], child["spec"]["completionMode"], child["spec"]["backoffLimit"]) == \
        (2, "Indexed", 0)
    pod = child["spec"]["template"]["spec"]
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "demo-sft-r-0-0.demo-sft.team.svc" == pod["initContainers"][0]["env"][0]["value"]
    assert "subdomain" not in pod
    single = stage_children(RUN, spec, plan_run(spec), "eval", "trainer:1", OperatorConfig(), jobsets=True)
    assert single[-1]["kind"] == "Job", "a one-node stage stays a Job"


def test_a_jobset_stage_is_read_like_a_job_and_never_restarted_by_the_operator():
    from reasoning_operator.jobset import as_stage_job

    spec = validate_spec(WIDE)
    plan = plan_run(spec)
    running = {"phase": "Running", "stages": {"sft": {"phase": "Running", "job": "demo-sft", "attempts": 1}}}
    meta = {"name": "demo-sft", "uid": "js-uid"}
    restarted = as_stage_job({"metadata": meta, "spec": {}, "status": {"restarts": 1, "replicatedJobsStatus": [
        {"name": "r", "active": 1}]}})
    pod = {"metadata": {"name": "demo-sft-r-0-0-x"}, "status": {"phase": "Running"}}
    again = decide(RUN, 1, spec, plan, running, Observed({"sft": restarted}, {"sft": [pod]}, NOW), 600)
    assert again.status.stages["sft"].message == "attempt 2 of 4"
    assert "StageRetrying" in [event.reason for event in again.events]
    failed = as_stage_job({"metadata": meta, "spec": {}, "status": {"restarts": 3, "conditions": [
        {"type": "Failed", "status": "True", "reason": "ReachedMaxRestarts", "message": "jobset failed"}]}})
    gave_up = decide(RUN, 1, spec, plan, running, Observed({"sft": failed}, {"sft": []}, NOW), 600)
    stage = gave_up.status.stages["sft"]
    assert (gave_up.remove, stage.phase, stage.reason, stage.restarts) == (None, "Failed", "ReachedMaxRestarts", 0)
    done = as_stage_job({"metadata": meta, "spec": {}, "status": {"conditions": [
        {"type": "Completed", "status": "True"}]}})
    assert decide(RUN, 1, spec, plan, running, Observed({"sft": done}, {"sft": []}, NOW),
                  600).status.stages["sft"].phase == "Succeeded"


def test_kueue_places_every_rank_of_a_stage_in_one_topology_domain():
    job = children({"preset": "full", "storage": {"size": "1Ti", "accessModes": ["ReadWriteMany"]},
                    "queueName": "team-a", "queueTopology": {"level": "cloud.google.com/gce-topology-block"},
                    "stages": {"sft": {"nodes": 2, "gpus": 16}}}, "sft")["Job"]
    template = job["spec"]["template"]
    assert template["metadata"]["annotations"]["kueue.x-k8s.io/podset-required-topology"] == \
        "cloud.google.com/gce-topology-block"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"]
    with pytest.raises(Rejected) as refused:
        admit(resource({"preset": "fast", "storage": {"size": "1Ti"},
                        "queueTopology": {"level": "kubernetes.io/hostname", "mode": "Preferred"}}))
    assert "spec.queueTopology: topology-aware scheduling is Kueue's: set queueName" in str(refused.value)


def test_a_stage_that_cannot_get_going_says_why_with_a_warning():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}, "queueName": "team-a"})
    plan = plan_run(spec)
    job = pending_job("sft")
    refused = decide(RUN, 1, spec, plan, {}, Observed({"sft": job}, {"sft": []}, NOW, create_failures={
        "sft": 'pods "demo-sft-x" is forbidden: exceeded quota: no-pods'}), 600)
    assert (progressing(refused)["status"], progressing(refused)["reason"]) == ("False", "FailedCreate")
    assert "exceeded quota" in progressing(refused)["message"]
    assert [event.reason for event in refused.events if event.type == "Warning"] == ["FailedCreate"]
    queued = {**job, "metadata": {**job["metadata"], "creationTimestamp": "2026-11-23T11:00:00Z"},
              "spec": {"suspend": True}}
    waiting = progressing(decide(RUN, 1, spec, plan, {}, Observed({"sft": queued}, {}, NOW), 600))
    assert waiting["reason"] == "NotAdmitted" and "is Kueue installed, with a LocalQueue team-a" in waiting["message"]
    creating = {"metadata": {"name": "demo-sft-x"}, "status": {"phase": "Pending", "startTime": "2026-11-23T11:30:00Z",
                "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    stuck = progressing(decide(RUN, 1, spec, plan, {}, Observed({"sft": job}, {"sft": [creating]}, NOW), 600))
    assert stuck["reason"] == "ContainerCreating" and "after 30 min" in stuck["message"]


def test_a_volcano_multi_node_stage_is_a_pod_group_its_pods_name():
    made = children({"preset": "2gpu", "gpu": {"memory": "80Gi"}, "schedulerName": "volcano",
                     "storage": {"size": "1Ti", "accessModes": ["ReadWriteMany"]},
                     "stages": {"sft": {"nodes": 2, "gpus": 16}}}, "sft")
    assert made["PodGroup"]["spec"] == {"minMember": 2, "minResources": {"nvidia.com/gpu": "16"}}
    template = made["Job"]["spec"]["template"]
    assert template["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == made["PodGroup"]["metadata"]["name"]
    assert "PodGroup" not in children({"preset": "fast", "storage": {"size": "1Gi"}, "schedulerName": "volcano"},
                                      "sft")


def test_a_multi_node_stage_restarts_as_a_whole_group_up_to_the_backoff_limit():
    spec = validate_spec({"preset": "2gpu", "gpu": {"memory": "80Gi"}, "backoffLimit": 1,
                          "storage": {"size": "1Ti", "accessModes": ["ReadWriteMany"]},
                          "stages": {"sft": {"nodes": 2, "gpus": 16}}})
    plan = plan_run(spec)
    job = children({"preset": "2gpu", "gpu": {"memory": "80Gi"}, "backoffLimit": 1,
                    "storage": {"size": "1Ti", "accessModes": ["ReadWriteMany"]},
                    "stages": {"sft": {"nodes": 2, "gpus": 16}}}, "sft")["Job"]
    assert job["spec"]["backoffLimit"] == 0, "one failed rank fails the group"
    assert job["spec"]["template"]["spec"]["initContainers"][0]["name"] == "wait-for-master"
    failed = {**job, "metadata": {**job["metadata"], "uid": "g1"}, "status": {"failed": 1, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    running = {"phase": "Running", "stages": {"sft": {"phase": "Running", "job": "demo-sft"}}}
    restarting = decide(RUN, 1, spec, plan, running, Observed({"sft": failed}, {}, NOW), 600)
    stage = restarting.status.stages["sft"]
    assert (restarting.remove, stage.phase, stage.restarts, stage.job) == ("sft", "Pending", 1, None)
    assert "StageRestarted" in [event.reason for event in restarting.events]
    stored = restarting.status_patch()
    waiting = decide(RUN, 1, spec, plan, stored, Observed({"sft": failed}, {}, NOW), 600)
    assert (waiting.create, waiting.remove, waiting.status.stages["sft"].restarts) == (None, None, 1)
    recreated = decide(RUN, 1, spec, plan, stored, Observed({}, {}, NOW), 600)
    assert recreated.create == "sft"
    again = {**failed, "metadata": {**failed["metadata"], "uid": "g2"}}
    exhausted = decide(RUN, 1, spec, plan, {**stored, "stages": {"sft": {**stored["stages"]["sft"], "job": "demo-sft",
                                                                          "phase": "Running"}}},
                       Observed({"sft": again}, {}, NOW), 600)
    assert exhausted.status.stages["sft"].phase == "Failed" and exhausted.status.stages["sft"].restarts == 1


RUNNING_SFT = {"stages": {"sft": {"phase": "Running", "job": "demo-sft", "attempts": 1}}}


@pytest.mark.parametrize("last, phase, reason", [
    ({}, "Failed", "JobDeleted"),  # deleted by a user (or never seen) before it finished
    ({"metadata": {"name": "demo-sft", "uid": "u"}, "status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}, "Succeeded", ""),  # removed by its TTL after succeeding
    ({"metadata": {"name": "demo-sft", "uid": "u"}, "status": {"failed": 3, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]}}, "Failed",
     "BackoffLimitExceeded"),
], ids=["deleted-running", "ttl-after-success", "ttl-after-failure"])
def test_a_vanished_stage_job_is_decided_from_its_last_state_and_never_recreated(last, phase, reason):
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    observed = Observed({}, {}, NOW, vanished={"sft": last})
    decision = decide(RUN, 1, spec, plan_run(spec), RUNNING_SFT, observed, 600)
    stage = decision.status_patch()["stages"]["sft"]
    assert (stage["phase"], stage.get("reason", "")) == (phase, reason)
    assert decision.create != "sft"
    if phase == "Succeeded":
        assert decision.create == "rl"  # the run goes on
    else:
        assert decision.create is None and decision.status_patch()["phase"] == "Failed"


def test_a_job_the_cache_has_not_seen_yet_is_not_mistaken_for_a_deleted_one():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    decision = decide(RUN, 1, spec, plan_run(spec), RUNNING_SFT, Observed({"sft": pending_job("sft")}, {}, NOW), 600)
    assert decision.status_patch()["stages"]["sft"]["phase"] in ("Pending", "Running")
    assert decision.create is None


def test_a_stage_whose_pod_succeeded_stays_running_until_its_job_is_marked_finished():
    spec = validate_spec({"preset": "fast", "storage": {"size": "1Gi"}})
    done_pod = {"metadata": {"name": "demo-sft-abc"}, "status": {"phase": "Succeeded"}}
    decision = decide(RUN, 1, spec, plan_run(spec), RUNNING_SFT,
                      Observed({"sft": pending_job("sft")}, {"sft": [done_pod]}, NOW), 600)
    stage = decision.status_patch()["stages"]["sft"]
    assert stage["phase"] == "Running", "not back to Pending between the pod's end and the Job's"
    assert "reason" not in stage, "no reason on a stage that has not failed"


def test_the_work_queue_folds_repeated_events_and_never_hands_one_run_to_two_workers():
    import asyncio

    from reasoning_operator.cache import WorkQueue

    async def scenario():
        queue = WorkQueue()
        queue.add(("ns", "a"))
        queue.add(("ns", "a"))
        queue.add(("ns", "b"))
        assert len(queue) == 2
        first = await queue.get()
        queue.add(first)  # an event while a worker reconciles it: queued for after that pass
        second = await queue.get()
        assert second != first and len(queue) == 0
        queue.done(first)
        assert await asyncio.wait_for(queue.get(), 1) == first

    asyncio.run(scenario())


def test_the_cache_keeps_the_newest_version_and_remembers_deleted_jobs():
    from reasoning_operator.cache import Cache

    def job(version: str, phase: str) -> dict:
        return {"metadata": {"name": "demo-sft", "namespace": "team", "resourceVersion": version},
                "status": {"phase": phase}}

    cache = Cache()
    cache.store_child("Job", ("team", "demo"), job("7", "new"))
    cache.store_child("Job", ("team", "demo"), job("5", "stale"))  # a late event of an older version
    assert cache.children("Job", ("team", "demo"))[0]["status"]["phase"] == "new"
    cache.store_child("Job", ("team", "demo"), job("9", "done"), deleted=True)
    assert cache.children("Job", ("team", "demo")) == []
    assert cache.deleted_jobs[("team", "demo")]["demo-sft"]["status"]["phase"] == "done"


def test_status_fields_an_older_crd_prunes_are_named():
    from reasoning_operator.handlers import _dropped_fields

    patch = {"phase": "Running", "stages": {"sft": {"restarts": 1, "phase": "Pending"}}, "retried": None}
    written = {"phase": "Running", "stages": {"sft": {"phase": "Pending"}}}
    assert _dropped_fields(patch, written) == ["status.stages.sft.restarts"]


def test_merge_patch_nulls_keys_that_went_away_and_skips_unchanged_ones():
    old = {"phase": "Succeeded", "completionTime": "t", "stages": {"sft": {"phase": "Running", "job": "j"}}}
    new = {"phase": "Running", "stages": {"sft": {"phase": "Running", "job": "j", "attempts": 2}}}
    assert merge_patch(old, new) == {"completionTime": None, "phase": "Running", "stages": {"sft": {"attempts": 2}}}
    assert merge_patch(new, new) == {}


def test_run_names_too_long_for_their_job_names_are_rejected_by_field():
    with pytest.raises(Rejected, match=r"metadata.name: at most 48 characters"):
        admit(resource({"preset": "tiny", "storage": {"size": "1Gi"}}, name="x" * 60))


def test_operator_settings_come_from_the_environment_and_bad_values_name_the_variable():
    config = OperatorConfig.from_env({"RTO_TRAINER_IMAGE": "registry/trainer:2", "RTO_RESYNC_SECONDS": "3"})
    assert (config.trainer_image, config.resync_seconds) == ("registry/trainer:2", 3.0)
    with pytest.raises(ValueError, match="RTO_STUCK_AFTER_SECONDS: expected a float"):
        OperatorConfig.from_env({"RTO_STUCK_AFTER_SECONDS": "soon"})


@pytest.mark.parametrize("spec_fields, stage", [
    ({"preset": "full", "storage": {"size": "1Ti"}, "queueName": "q", "ttlSecondsAfterFinished": 60,
      "tolerations": [{"key": "a", "operator": "Equal", "value": "b", "effect": "NoSchedule"}]}, "rl"),
    ({"preset": "2gpu", "storage": {"size": "1Ti", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]},
      "gpu": {"memory": "80Gi"},
      "stages": {"sft": {"nodes": 2, "gpus": 16}}, "hfTokenSecret": {"name": "hf"}}, "sft"),
    ({"preset": "tiny", "storage": {"size": "2Gi"}}, "select"),
])
def test_every_child_is_a_valid_kubernetes_object(spec_fields, stage):
    import kubernetes_validate

    spec = validate_spec(spec_fields)
    made = stage_children(RUN, spec, plan_run(spec), stage, "trainer:1", OperatorConfig())
    claim = volume_claim(RUN, spec)
    for manifest in made + ([claim] if claim else []):
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
