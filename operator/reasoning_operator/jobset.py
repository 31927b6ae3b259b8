"""Multi-node stages as JobSets, on clusters that serve jobset.x-k8s.io.

JobSet restarts every rank of a group when one fails (``failurePolicy.maxRestarts`` =
``spec.backoffLimit``), makes the headless Service the ranks find each other by, and is what Kueue
and cluster tooling already understand as one distributed training workload. Where it is not
installed, the operator's own group restart (progress.py) does the same with a plain Indexed Job.

The reconciler's core reads a JobSet through ``as_stage_job``: the same fields it reads of a Job.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "jobset.x-k8s.io/v1alpha2"
PLURAL = "jobsets"
# The one replicated Job; short, as it is part of every rank's hostname <run>-<stage>-r-0-<rank>.
REPLICATED_JOB = "r"
UID_LABEL = "jobset.sigs.k8s.io/jobset-uid"
# A Job that failed on an unusable plan (its podFailurePolicy) or its deadline would fail again.
NO_RESTART_REASONS = ["PodFailurePolicy", "DeadlineExceeded"]
_CONDITIONS = {"Completed": "Complete", "Failed": "Failed", "Suspended": "Suspended"}


def as_jobset(job: dict[str, Any], backoff_limit: int, child_labels: dict[str, str]) -> dict[str, Any]:
    """The stage's Indexed Job as the one replicated Job of a JobSet of the same name. Suspension
    (and the Job's queue label, left out of ``child_labels``) moves up to the JobSet: Kueue admits
    the JobSet as a whole."""
    job_spec = dict(job["spec"])
    suspend = job_spec.pop("suspend", False)
    ttl = job_spec.pop("ttlSecondsAfterFinished", None)
    metadata = job["metadata"]
    spec: dict[str, Any] = {
        "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1,
                            "template": {"metadata": {"labels": child_labels}, "spec": job_spec}}],
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {"maxRestarts": backoff_limit, "rules": [
            {"name": "NoRestartForAnUnusablePlanOrADeadline", "action": "FailJobSet",
             "onJobFailureReasons": NO_RESTART_REASONS}]},
        "suspend": suspend,
    }
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {"apiVersion": API_VERSION, "kind": "JobSet", "metadata": metadata, "spec": spec}


def as_stage_job(jobset: dict[str, Any]) -> dict[str, Any]:
    """What the reconciler reads of a stage's Job, from its JobSet: finished conditions, suspension,
    and its restarts as failed attempts."""
    status = jobset.get("status") or {}
    conditions = [{**condition, "type": _CONDITIONS[condition.get("type")]}
                  for condition in status.get("conditions") or [] if condition.get("type") in _CONDITIONS]
    active = sum(int(child.get("active", 0)) for child in status.get("replicatedJobsStatus") or [])
    return {"kind": "JobSet", "metadata": jobset["metadata"],
            "spec": {"suspend": bool((jobset.get("spec") or {}).get("suspend"))},
            "status": {"conditions": conditions, "failed": int(status.get("restarts", 0)), "active": active}}


def is_jobset(job: dict[str, Any]) -> bool:
    return job.get("kind") == "JobSet"
