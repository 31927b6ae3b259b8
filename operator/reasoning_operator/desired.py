"""What should exist for a run: pure functions from (run, spec, plan) to Kubernetes manifests.

No API calls here. Names are deterministic (``<run>-<stage>``), so creating a child is
"create if absent" and a restarted operator finds what it made before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from reasoning_trainer.job import plan_document
from reasoning_trainer.console import LOG_FORMAT_ENV
from reasoning_trainer.metrics import LINGER_ENV
from reasoning_trainer.planner import RunPlan
from reasoning_trainer.schema import GROUP, KIND, VERSION, RunSpec

from .jobset import REPLICATED_JOB, as_jobset

RUN_LABEL = f"{GROUP}/run"
STAGE_LABEL = f"{GROUP}/stage"
# The chart's PodMonitor selects trainer pods by this label and scrapes the named port.
TRAINER_LABELS = {"app.kubernetes.io/name": "reasoning-trainer", "app.kubernetes.io/part-of": "reasoning-operator",
                  "app.kubernetes.io/managed-by": "reasoning-operator"}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_TOPOLOGY_ANNOTATION = "kueue.x-k8s.io/podset-{mode}-topology"
# Volcano schedules the pods that name a PodGroup all together or not at all.
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
CONTAINER = "trainer"
PLAN_DIR = "/etc/rto"
PLAN_FILE = f"{PLAN_DIR}/plan.json"
DATA_DIR = "/data"
METRICS_PORT = 9400
# The trainer image's user and group (images/trainer/Dockerfile).
TRAINER_UID = TRAINER_GID = 1000
# What the `restricted` Pod Security Standard asks of every container.
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
RENDEZVOUS_PORT = 29500
# Exit code of ``rto train`` for an unusable plan file: retrying cannot help.
EXIT_BAD_PLAN = 2
# Job names become pod labels and, with "-<index>", pod hostnames of multi-node stages: both are capped
# at 63 characters. "select" is the longest stage name; 128 nodes need up to "-127", and a JobSet's
# ranks are named <jobset>-r-0-<index>.
MAX_RUN_NAME = 63 - len("-select") - len(f"-{REPLICATED_JOB}-0") - len("-127")


@dataclass(frozen=True)
class Run:
    """The parent resource's identity, as its children refer to it."""

    name: str
    namespace: str
    uid: str
    retry: str | None = None  # the reasoning.dev/retry annotation: a new value asks to rerun failed stages

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Run:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], (meta.get("annotations") or {}).get(RETRY_ANNOTATION))

    @property
    def output_dir(self) -> str:
        """The run's folder on the volume; the uid keeps a recreated run of the same name apart."""
        return f"{DATA_DIR}/{self.name}-{self.uid[:8]}"

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def labels(self, stage: str | None = None) -> dict[str, str]:
        labels = {**TRAINER_LABELS, RUN_LABEL: self.name}
        return labels if stage is None else {**labels, STAGE_LABEL: stage}

    def metadata(self, name: str, stage: str | None = None) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": self.labels(stage),
                "ownerReferences": [self.owner_reference()]}


RETRY_ANNOTATION = f"{GROUP}/retry"


def job_name(run: str, stage: str) -> str:
    return f"{run}-{stage}"


def claim_name(run: Run, spec: RunSpec) -> str:
    return spec.storage.existing_claim or f"{run.name}-data"


def is_data_parallel(stage_plan: dict[str, Any]) -> bool:
    """Training on several GPUs runs one process per GPU under torchrun; inference stages place
    each model on its own GPU inside one process."""
    return stage_plan["zero_stage"] is not None and stage_plan["gpus"] > 1


def volume_claim(run: Run, spec: RunSpec) -> dict[str, Any] | None:
    """The claim to create for the run's checkpoints and results; None for an existing claim."""
    storage = spec.storage
    if storage.existing_claim:
        return None
    claim_spec: dict[str, Any] = {"accessModes": list(storage.access_modes),
                                  "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    metadata = run.metadata(claim_name(run, spec))
    if storage.when_deleted == "Retain":  # no owner: the garbage collector leaves it when the run goes
        del metadata["ownerReferences"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}


def plan_config_map(run: Run, spec: RunSpec, plan: RunPlan, stage: str) -> dict[str, Any]:
    """The plan the stage starts from, frozen when its Job is created: a later spec change
    reaches only stages that have not started. Named by its content, so a Job made after the spec
    changed (a retry, a resume) mounts the plan it was made from, never an older one."""
    text = json.dumps(plan_document(run.name, run.namespace, spec, plan, run.output_dir), indent=2)
    name = f"{job_name(run.name, stage)}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": run.metadata(name, stage),
            "data": {"plan.json": text}}


def headless_service(run: Run, stage: str) -> dict[str, Any]:
    """Stable DNS names ``<job>-<index>.<job>`` for the pods of a multi-node stage."""
    name = job_name(run.name, stage)
    return {"apiVersion": "v1", "kind": "Service", "metadata": run.metadata(name, stage),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {RUN_LABEL: run.name, STAGE_LABEL: stage},
                     "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}]}}


def stage_children(run: Run, spec: RunSpec, plan: RunPlan, stage: str, image: str, config,
                   jobsets: bool = False) -> list[dict[str, Any]]:
    """Everything one stage needs, in creation order: plan ConfigMap, Service and (with Volcano)
    PodGroup of a multi-node stage, Job. With ``jobsets`` (the cluster serves JobSet), a multi-node
    stage is a JobSet instead of the Job and the Service: JobSet restarts the group and makes the
    Service."""
    stage_plan = plan.stages[stage].to_dict()
    config_map = plan_config_map(run, spec, plan, stage)
    children = [config_map]
    jobset = jobsets and stage_plan["nodes"] > 1
    if stage_plan["nodes"] > 1:
        if not jobset:
            children.append(headless_service(run, stage))
        if _gang_scheduled(spec, stage_plan):
            children.append(pod_group(run, spec, stage, stage_plan))
    job = stage_job(run, spec, stage, stage_plan, image, config, config_map["metadata"]["name"], jobset)
    children.append(as_jobset(job, spec.backoff_limit, run.labels(stage)) if jobset else job)
    return children


def _gang_scheduled(spec: RunSpec, stage_plan: dict[str, Any]) -> bool:
    return spec.scheduler_name == "volcano" and stage_plan["nodes"] > 1


def pod_group(run: Run, spec: RunSpec, stage: str, stage_plan: dict[str, Any]) -> dict[str, Any]:
    """Volcano's gang: no rank of a multi-node stage starts until every rank can (minMember), so a
    half-placed group never holds GPUs while it waits for the rest."""
    group: dict[str, Any] = {"minMember": stage_plan["nodes"]}
    if stage_plan["gpus"]:
        group["minResources"] = {spec.gpu.resource_name: str(stage_plan["gpus"])}
    if spec.priority_class_name:
        group["priorityClassName"] = spec.priority_class_name
    return {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
            "metadata": run.metadata(job_name(run.name, stage), stage), "spec": group}


def stage_job(run: Run, spec: RunSpec, stage: str, stage_plan: dict[str, Any], image: str, config,
              plan_name: str, jobset: bool = False) -> dict[str, Any]:
    name = job_name(run.name, stage)
    nodes = stage_plan["nodes"]
    gpus_per_node = stage_plan["gpus"] // nodes
    metadata = run.metadata(name, stage)
    metadata["annotations"] = _plan_annotations(stage_plan)
    if spec.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
    job_spec: dict[str, Any] = {
        # Each retry is a new pod that resumes from the stage's last complete checkpoint.
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": [EXIT_BAD_PLAN]}},
            # Preemption and node drains do not use up the run's retries.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        # Kueue admits a Job by unsuspending it.
        "suspend": bool(spec.queue_name),
        "template": {
            "metadata": {"labels": {**spec.pod_labels, **run.labels(stage)},
                         "annotations": {**spec.pod_annotations, **metadata["annotations"]}},
            "spec": _pod_spec(run, spec, stage, stage_plan, gpus_per_node, image, config, plan_name),
        },
    }
    if spec.queue_topology:
        annotation = KUEUE_TOPOLOGY_ANNOTATION.format(mode=spec.queue_topology.mode.lower())
        job_spec["template"]["metadata"]["annotations"][annotation] = spec.queue_topology.level
    if nodes > 1:
        # One failed rank fails the whole group at once: the Job controller stops the other ranks,
        # which would otherwise wait in the rendezvous for a peer that a lone retry cannot rejoin.
        # The operator then restarts the group, up to spec.backoffLimit times (progress.py).
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes, backoffLimit=0)
        pod = job_spec["template"]["spec"]
        master = {"name": "MASTER_ADDR", "value": master_addr(run, stage, jobset)}
        pod["containers"][0]["env"].append(master)
        pod["initContainers"] = [_wait_for_master(master, image)]
        if not jobset:
            pod["subdomain"] = name
        if _gang_scheduled(spec, stage_plan):
            job_spec["template"]["metadata"]["annotations"][VOLCANO_GROUP_ANNOTATION] = name
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


# Every rank waits until the master's DNS name (a record of the headless Service) resolves, so that
# torchrun's static rendezvous does not fail on a name that is not there yet.
WAIT_FOR_MASTER = """import os, socket, sys, time
host, deadline = os.environ["MASTER_ADDR"], time.time() + 600
while True:
    try:
        socket.getaddrinfo(host, None)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(host + " did not resolve within 10 minutes: is the headless Service there?")
        time.sleep(2)
"""


def _wait_for_master(master: dict[str, str], image: str) -> dict[str, Any]:
    return {"name": "wait-for-master", "image": image, "command": ["python", "-c", WAIT_FOR_MASTER],
            "env": [master], "securityContext": dict(RESTRICTED_CONTAINER)}


def master_addr(run: Run, stage: str, jobset: bool) -> str:
    """Rank 0's DNS name: ``<job>-0`` under the operator's headless Service, or the hostname JobSet
    gives the first pod of its first Job, under the Service JobSet makes."""
    name = job_name(run.name, stage)
    host = f"{name}-{REPLICATED_JOB}-0-0" if jobset else f"{name}-0"
    return f"{host}.{name}.{run.namespace}.svc"


def _plan_annotations(stage_plan: dict[str, Any]) -> dict[str, str]:
    """The planner's decisions, readable with ``kubectl describe`` (the trainer reads the plan file)."""
    eight_bit = [role for role, on in stage_plan["load_in_8bit"].items() if on]
    annotations = {f"{GROUP}/gpus": str(stage_plan["gpus"]), f"{GROUP}/dtype": stage_plan["dtype"],
                   f"{GROUP}/load-in-8bit": ",".join(eight_bit) or "none",
                   f"{GROUP}/planned-memory-gib": str(stage_plan["memory_gib"])}
    if stage_plan["zero_stage"] is not None:
        annotations[f"{GROUP}/zero-stage"] = str(stage_plan["zero_stage"])
    return annotations


def _container_resources(spec: RunSpec, gpus_per_node: int) -> dict[str, dict[str, Any]]:
    """The spec's CPU, memory and scratch space, plus the planned GPUs (requests = limits)."""
    resources: dict[str, dict[str, Any]] = {}
    if spec.resources:
        for kind in ("requests", "limits"):
            if amounts := getattr(spec.resources, kind).manifest():
                resources[kind] = amounts
    if gpus_per_node:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[spec.gpu.resource_name] = gpus_per_node
    return resources


def _pod_spec(run: Run, spec: RunSpec, stage: str, stage_plan: dict[str, Any], gpus_per_node: int,
              image: str, config, plan_name: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": _command(stage, stage_plan, gpus_per_node),
        "env": _env(run, spec, stage, stage_plan, gpus_per_node, config),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "volumeMounts": [{"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        # The trainer writes a JSON result there; an OOM kill leaves the log tail instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(RESTRICTED_CONTAINER),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    resources = _container_resources(spec, gpus_per_node)
    if resources:
        container["resources"] = resources
    shm_gib = max(1, config.shm_gib_per_gpu * gpus_per_node)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        # The pods pass the `restricted` Pod Security Standard: the trainer's own uid (a spec.image
        # built on another user runs as 1000 too), the runtime's seccomp profile. The volume's group
        # lets it write there; OnRootMismatch skips the recursive chown of a large volume that
        # already has the right owner.
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_GID,
                            "fsGroup": TRAINER_GID, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # The trainer never calls the Kubernetes API, so its pods carry no token to steal.
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {"name": "plan", "configMap": {"name": plan_name}},
            {"name": "data", "persistentVolumeClaim": {"claimName": claim_name(run, spec)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}},
        ],
    }
    node_selector = dict(spec.node_selector)
    if gpus_per_node and spec.gpu.product_label:
        node_selector["nvidia.com/gpu.product"] = spec.gpu.product_label
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = [toleration.model_dump(by_alias=True, exclude_none=True) for toleration in spec.tolerations]
    if gpus_per_node:
        # GPU node pools are commonly tainted with the GPU resource name.
        tolerations.append({"key": spec.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.affinity:
        pod["affinity"] = spec.affinity.model_dump(by_alias=True, exclude_defaults=True)
    for key, value in (("priorityClassName", spec.priority_class_name),
                       ("schedulerName", spec.scheduler_name),
                       ("serviceAccountName", config.trainer_service_account or None)):
        if value:
            pod[key] = value
    return pod


def _command(stage: str, stage_plan: dict[str, Any], gpus_per_node: int) -> list[str]:
    train = ["train", stage, "--plan", PLAN_FILE]
    if not is_data_parallel(stage_plan):
        return ["rto", *train]
    if stage_plan["nodes"] == 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={gpus_per_node}",
                "-m", "reasoning_trainer.cli", *train]
    # $(VAR) is expanded by the kubelet from the container's environment.
    return ["torchrun", "--nnodes=$(NNODES)", "--nproc-per-node=$(NPROC_PER_NODE)", "--node-rank=$(NODE_RANK)",
            "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
            "-m", "reasoning_trainer.cli", *train]


def _env(run: Run, spec: RunSpec, stage: str, stage_plan: dict[str, Any], gpus_per_node: int,
         config) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": LINGER_ENV, "value": str(config.metrics_linger_seconds)},
        # One JSON object per log line, for the cluster's log pipeline; `rto logs` prints them as text.
        {"name": LOG_FORMAT_ENV, "value": "json"},
        # Downloads land on the run's volume, so a retried pod does not fetch the models again.
        {"name": "HF_HOME", "value": f"{DATA_DIR}/.cache/huggingface"},
    ]
    tracking = spec.tracking
    secrets = (("HF_TOKEN", spec.hf_token_secret),
               ("MLFLOW_TRACKING_TOKEN", tracking.mlflow and tracking.mlflow.token_secret),
               ("WANDB_API_KEY", tracking.wandb and tracking.wandb.api_key_secret))
    for variable, secret in secrets:
        if secret:
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    nodes = stage_plan["nodes"]
    if nodes > 1:
        env += [
            {"name": "NNODES", "value": str(nodes)},
            {"name": "NPROC_PER_NODE", "value": str(gpus_per_node)},
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        ]
    return env
