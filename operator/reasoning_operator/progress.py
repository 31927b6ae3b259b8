"""The run's next status, computed from its spec, plan and the Jobs and Pods observed now.

Pure: ``decide`` returns the whole new status, the one action to take (create a stage's
children, or remove a stage's Job to suspend it) and the events the change deserves. The
status is the record of finished stages, so a Job cleaned up by its TTL is never rerun.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reasoning_trainer.planner import RunPlan
from reasoning_trainer.schema import RunSpec
from reasoning_trainer.schema.run import Condition, RunStatus, StageStatus

from .desired import CONTAINER, Run, job_name

CONDITION_TYPES = ("Ready", "Progressing", "Succeeded", "Failed", "Suspended")
# Waiting reasons that do not fix themselves: reported at once, not after stuck_after.
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError"}
# A stage that cannot get going: each is a Warning event and Progressing=False.
STUCK_REASONS = {"Unschedulable", "FailedCreate", "NotAdmitted", "ContainerCreating"}
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# The Job controller sets FailureTarget first, then Failed once every pod has stopped.
FAILED_CONDITIONS = ("FailureTarget", "Failed")


@dataclass(frozen=True)
class Observed:
    jobs: dict[str, dict[str, Any]]  # stage -> its Job
    pods: dict[str, list[dict[str, Any]]]  # stage -> its Job's pods
    now: datetime
    # stage -> the last state seen of its Job, confirmed deleted ({} when never seen)
    vanished: dict[str, dict[str, Any]] = field(default_factory=dict)
    # stage -> why the Job controller cannot create its pod (its latest FailedCreate event)
    create_failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: RunStatus
    create: str | None = None  # create this stage's children
    remove: str | None = None  # delete this stage's Job (suspend: its pod checkpoints on SIGTERM)
    events: list[Event] = field(default_factory=list)

    def status_patch(self, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole new status; fields of ``stored`` this version does not know (a newer
        operator's) are kept as they are."""
        unknown = {key: value for key, value in (stored or {}).items() if key not in _STATUS_FIELDS}
        return {**unknown, **self.status.model_dump(by_alias=True, exclude_none=True)}


_STATUS_FIELDS = {field.alias or name for name, field in RunStatus.model_fields.items()}


def load_status(raw: dict[str, Any] | None) -> RunStatus:
    """The stored status; fields this version does not know are left out, not fatal."""
    return RunStatus.model_validate({key: value for key, value in (raw or {}).items() if key in _STATUS_FIELDS})


def decide(run: Run, generation: int, spec: RunSpec, plan: RunPlan, stored: dict[str, Any] | None,
           observed: Observed, stuck_after: float) -> Decision:
    before = load_status(stored)
    status = before.model_copy(deep=True)
    status.observed_generation, status.gpus = generation, plan.gpus
    status.start_time = status.start_time or _stamp(observed.now)
    status.output_dir = run.output_dir
    decision = Decision(status)
    enabled = spec.enabled_stages()
    retry = run.retry if run.retry is not None and run.retry != before.retried else None
    if retry is not None and not any(stage.phase == "Failed" for stage in before.stages.values()):
        status.retried, retry = retry, None  # consumed, so that it never reruns a later failure unasked
        decision.events.append(Event("Normal", "RetryIgnored", "reasoning.dev/retry changed, but no stage has failed"))
    for stage in enabled:
        stage_status = status.stages.setdefault(stage, StageStatus())
        if stage_status.phase == "Pending" and stage not in observed.jobs:
            stage_status.gpus = plan.stages[stage].gpus  # not started: follows the current spec
    stopping = _stop_disabled(enabled, status, observed, decision)
    progressing = stopping or _advance(run.name, spec, enabled, status, observed, stuck_after, decision, retry)
    _summarize(spec, enabled, status, observed.now, progressing, stopping is not None)
    if status.phase == "Failed":
        _condition(status, "Ready", False, "RunFailed", progressing[2], observed.now)
    else:
        _condition(status, "Ready", True, "Planned", f"stages {', '.join(enabled)} planned; most GPUs "
                                                     f"of a stage: {plan.gpus}", observed.now)
    decision.events += transition_events(before, status, generation)
    return decision


def refuse_child(decision: Decision, before: RunStatus, generation: int, kind: str, name: str, api_reason: str,
                 message: str, now: datetime) -> None:
    """The API server refused to create a child of the stage ``decision`` was starting (a quota, Pod
    Security, RBAC, a field it rejects): the run says which object, the API server's reason and
    words, and that the operator tries again with back-off. The same refusal again changes nothing,
    so it is said once."""
    status, stage = decision.status, decision.create
    reason = f"{kind}{api_reason or 'Refused'}"
    text = f"the API server refused {kind} {name}: {message}"
    current = status.stages[stage]
    current.job = (before.stages.get(stage) or StageStatus()).job  # nothing was created
    current.message = f"{text}; trying again with back-off"
    _condition(status, "Ready", False, reason, text, now)
    _condition(status, "Progressing", False, reason, f"stage {stage} cannot start: {kind} {name} was refused; "
                                                     f"trying again with back-off", now)
    for condition in status.conditions:  # a refusal seen again is no new transition
        old = next((old for old in before.conditions if old.type == condition.type), None)
        if old is not None and old.status == condition.status:
            condition.last_transition_time = old.last_transition_time
    decision.events = transition_events(before, status, generation)


def rejected(generation: int, stored: dict[str, Any] | None, reason: str, message: str, now: datetime) -> Decision:
    """An invalid spec: nothing new starts, a running stage keeps the plan it started with."""
    before = load_status(stored)
    status = before.model_copy(deep=True)
    status.observed_generation = generation
    _condition(status, "Ready", False, reason, message, now)
    if not any(stage.phase != "Pending" for stage in status.stages.values()):
        _condition(status, "Progressing", False, reason, "fix the spec to start the run", now)
    return Decision(status, events=transition_events(before, status, generation))


def _stop_disabled(enabled: list[str], status: RunStatus, observed: Observed,
                   decision: Decision) -> tuple[bool, str, str] | None:
    """A stage disabled (spec.stages.<stage>.enabled: false) after it started: its Job is deleted
    (its pod saves a checkpoint on SIGTERM) and the stage is recorded Stopped, never Succeeded.
    Nothing else starts until that Job is gone. A disabled stage that never started is dropped."""
    for stage, current in list(status.stages.items()):
        if stage in enabled or current.phase not in ("Pending", "Running", "Suspended"):
            continue
        job = observed.jobs.get(stage)
        if job is None:
            if current.job is None:
                del status.stages[stage]
            else:
                current.phase = "Stopped"
                current.message = f"stopped: spec.stages.{stage}.enabled was set to false while it ran"
            continue
        if not job["metadata"].get("deletionTimestamp"):
            decision.remove = stage
        current.message = f"stopping: spec.stages.{stage}.enabled is false; deleting Job {current.job}"
        return True, "StageStopping", f"stage {stage}: {current.message}"
    return None


def _advance(run: str, spec: RunSpec, enabled: list[str], status: RunStatus, observed: Observed,
             stuck_after: float, decision: Decision, retry: str | None) -> tuple[bool, str, str]:
    """Walk the stages in order up to the first unfinished one; returns the Progressing condition."""
    for stage in enabled:
        current = status.stages[stage]
        if current.phase == "Succeeded":
            continue
        status.stage = stage
        job = observed.jobs.get(stage)
        if current.phase == "Failed" and retry is not None:
            if job is not None:  # the failed Job goes first: its successor has the same name
                if not job["metadata"].get("deletionTimestamp"):
                    decision.remove = stage
                current.message = f"retry requested: removing the failed Job {current.job} first"
                return True, "Retrying", f"stage {stage}: {current.message}"
            status.retried = retry
            current.phase, current.reason, current.completion_time = "Pending", None, None
            current.retries += 1
            current.job = None
        if current.phase == "Failed":
            return False, current.reason or "StageFailed", f"stage {stage} failed: {current.message}"
        if spec.suspend:
            return _suspend(stage, current, job, decision)
        if job is None and stage in observed.vanished and current.phase in ("Pending", "Running"):
            last = observed.vanished[stage]
            if job_outcome(last) == "Complete":
                _record_success(current, last, observed.pods.get(stage, []))
                continue
            _record_vanished(current, last, observed.pods.get(stage, []))
            return False, current.reason or "StageFailed", f"stage {stage} failed: {current.message}"
        if job is None:
            decision.create = stage
            current.job, current.phase = job_name(run, stage), "Pending"
            current.message = "creating the stage's Job"
            return True, "StageCreated", f"stage {stage}: creating Job {current.job}"
        if job["metadata"].get("deletionTimestamp"):
            current.message = "waiting for the previous Job's pods to stop"
            return True, "StageTerminating", f"stage {stage}: {current.message}"
        outcome = job_outcome(job)
        pods = observed.pods.get(stage, [])
        if outcome == "Failed" and current.job is None and current.restarts:  # the restarted group's old Job
            current.message = "waiting for the failed group's Job to go"
            return True, "GroupRestarting", f"stage {stage}: {current.message}"
        if outcome == "Complete":
            _record_success(current, job, pods)
            continue
        if outcome == "Failed":
            restart = _restart_group(stage, spec, current, job, pods, decision)
            if restart is not None:
                return restart
            _record_failure(current, job, pods)
            return False, current.reason or "StageFailed", f"stage {stage} failed: {current.message}"
        return _running(stage, spec, current, job, pods, observed.now, stuck_after,
                        observed.create_failures.get(stage))
    status.stage = None
    return False, "Succeeded", "every stage succeeded"


def _suspend(stage: str, current: StageStatus, job: dict | None, decision: Decision) -> tuple[bool, str, str]:
    if job is not None and not job["metadata"].get("deletionTimestamp") and job_outcome(job) is None:
        decision.remove = stage
    current.phase = "Suspended"
    current.message = "suspended; set spec.suspend: false to resume from the last checkpoint"
    return False, "Suspended", f"stage {stage} {current.message}"


def _restart_group(stage: str, spec: RunSpec, current: StageStatus, job: dict, pods: list[dict],
                   decision: Decision) -> tuple[bool, str, str] | None:
    """A multi-node stage whose Job failed (a rank failed: its backoffLimit is 0) starts again as a
    whole from the last checkpoint, up to spec.backoffLimit times. Not after a deadline or an
    unusable plan: those would fail again."""
    if (job.get("spec") or {}).get("completions", 1) <= 1 or current.restarts >= spec.backoff_limit \
            or _job_condition_reason(job) != "BackoffLimitExceeded":
        return None
    result, _ = trainer_result(_termination_result(_result_pod(pods, "Failed")))
    reason = result.get("reason") or "a rank failed"
    decision.remove = stage
    current.restarts += 1
    current.phase, current.job = "Pending", None
    current.message = (f"{reason}; restarting all {job['spec']['completions']} ranks from the last checkpoint "
                       f"(restart {current.restarts} of {spec.backoff_limit})")
    return True, "GroupRestarting", f"stage {stage}: {current.message}"


def _running(stage: str, spec: RunSpec, current: StageStatus, job: dict, pods: list[dict], now: datetime,
             stuck_after: float, create_failure: str | None) -> tuple[bool, str, str]:
    job_status = job.get("status") or {}
    current.job = job["metadata"]["name"]
    current.attempts = int(job_status.get("failed", 0)) + 1
    current.start_time = current.start_time or job_status.get("startTime")
    attempt = f"attempt {current.attempts} of {spec.backoff_limit + 1}"
    if (job.get("spec") or {}).get("suspend"):
        current.phase = "Pending"
        current.message = f"waiting for Kueue to admit the Job (queue {spec.queue_name})" if spec.queue_name \
            else "the Job is suspended"
        waited = _seconds_since(job["metadata"].get("creationTimestamp"), now)
        if spec.queue_name and waited is not None and waited >= stuck_after:
            current.message = (f"not admitted by Kueue for {int(waited // 60)} min: is Kueue installed, with a "
                               f"LocalQueue {spec.queue_name} in this namespace? (kubectl get localqueues)")
            return False, "NotAdmitted", f"stage {stage}: {current.message}"
        return True, "Queued", f"stage {stage}: {current.message}"
    if not pods and create_failure:
        current.phase = "Pending"
        current.message = f"the Job controller cannot create the stage's pod: {create_failure}"
        return False, "FailedCreate", f"stage {stage}: {current.message}"
    stuck = _stuck(pods, now, stuck_after)
    if stuck is not None:
        reason, message = stuck
        current.phase, current.message = "Pending", message
        return False, reason, f"stage {stage}: {message}"
    # A pod that has succeeded while the Job is not yet marked finished is still this stage running.
    if any((pod.get("status") or {}).get("phase") in ("Running", "Succeeded") for pod in pods):
        current.phase, current.message = "Running", attempt
        return True, "StageRunning", f"stage {stage} running ({attempt})"
    current.phase, current.message = "Pending", f"waiting for the pod to start ({attempt})"
    return True, "StagePending", f"stage {stage}: {current.message}"


def _stuck(pods: list[dict], now: datetime, stuck_after: float) -> tuple[str, str] | None:
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        name = pod["metadata"]["name"]
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_ERRORS:
                return waiting["reason"], f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip()
            waited = _seconds_since(status.get("startTime"), now)
            if waiting.get("reason") == "ContainerCreating" and waited is not None and waited >= stuck_after:
                return "ContainerCreating", (f"pod {name} still creating its container after {int(waited // 60)} "
                                             f"min (a volume that will not mount, a slow image pull): "
                                             f"kubectl describe pod {name}")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                    and condition.get("reason") == "Unschedulable":
                since = _parse(condition.get("lastTransitionTime"))
                if since is not None and (now - since).total_seconds() >= stuck_after:
                    minutes = int((now - since).total_seconds() // 60)
                    return "Unschedulable", (f"pod {name} unschedulable for {minutes} min: "
                                             f"{condition.get('message', '')}").strip()
    return None


def job_outcome(job: dict) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition["type"] in ("Complete", "SuccessCriteriaMet"):
            return "Complete"
        if condition["type"] in FAILED_CONDITIONS:
            return "Failed"
    return None


def _record_success(current: StageStatus, job: dict, pods: list[dict]) -> None:
    job_status = job.get("status") or {}
    current.phase, current.job = "Succeeded", job["metadata"]["name"]
    current.start_time = current.start_time or job_status.get("startTime")
    current.completion_time = job_status.get("completionTime") or current.start_time
    result, dropped = trainer_result(_termination_result(_result_pod(pods, "Succeeded")))
    current.duration_seconds = result.get("durationSeconds", _seconds(current.start_time, current.completion_time))
    current.accuracy = result.get("accuracy")
    current.checkpoint = result.get("checkpoint")
    current.metrics = result.get("metrics", {})
    current.message = "succeeded" + (f"; left out of the trainer's result: {', '.join(dropped)}" if dropped else "")


def _record_failure(current: StageStatus, job: dict, pods: list[dict]) -> None:
    job_status = job.get("status") or {}
    current.phase, current.job = "Failed", job["metadata"]["name"]
    current.attempts = max(current.attempts, int(job_status.get("failed", 0)))
    result, _ = trainer_result(_termination_result(_result_pod(pods, "Failed")))
    current.reason = _job_condition_reason(job) or "StageFailed"
    reason = result.get("reason") or _job_condition_message(job) or "the stage's Job failed"
    current.message = f"{reason} (after {current.attempts} attempt{'s' if current.attempts != 1 else ''})"
    current.completion_time = current.completion_time or _last_condition_time(job)


def _record_vanished(current: StageStatus, last: dict, pods: list[dict]) -> None:
    """The stage's Job is gone: its failure, or a delete before it finished. Never recreated,
    so a Job that keeps disappearing cannot turn into a loop that holds GPUs."""
    if job_outcome(last) == "Failed":
        _record_failure(current, last, pods)
        return
    current.phase, current.reason = "Failed", "JobDeleted"
    current.message = (f"Job {current.job} was deleted before the stage finished (kubectl delete, or a "
                       f"ttlSecondsAfterFinished shorter than the operator's reaction); the stage is not rerun")


def _result_pod(pods: list[dict], phase: str) -> dict | None:
    """The pod whose termination message speaks for the stage: rank 0 (index 0) writes results."""
    matching = [pod for pod in pods if (pod.get("status") or {}).get("phase") == phase]
    matching.sort(key=lambda pod: (((pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, "0")) == "0",
                                   pod["metadata"].get("creationTimestamp") or ""))
    return matching[-1] if matching else None


def _termination_result(pod: dict | None) -> dict[str, Any]:
    """The trainer's JSON termination message; a kill leaves the kubelet's reason or the log tail."""
    if pod is None:
        return {}
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != CONTAINER:
            continue
        terminated = (container.get("state") or {}).get("terminated") or {}
        text = terminated.get("message") or ""
        try:
            message = json.loads(text)
            if isinstance(message, dict):
                return message
        except ValueError:
            pass
        kubelet = f"{terminated.get('reason', 'terminated')} (exit code {terminated.get('exitCode', '?')})"
        tail = text.strip().splitlines()[-1][:500] if text.strip() else ""
        return {"reason": f"{kubelet}: {tail}" if tail else kubelet}
    return {}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What the status keeps of a trainer's result: the API server's JSON decoder refuses NaN and the
# CRD refuses a string where a number belongs, and one such value would freeze every later patch.
_RESULT_FIELDS = {"durationSeconds": _finite, "accuracy": _finite,
                  "checkpoint": lambda value: isinstance(value, str),
                  "reason": lambda value: isinstance(value, str)}


def trainer_result(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The fields of a termination message the status can hold, and the names of those left out
    (wrong type or not finite, and what the trainer itself reported as not finite)."""
    result, dropped = {}, []
    for key, fits in _RESULT_FIELDS.items():
        if raw.get(key) is not None:
            if fits(raw[key]):
                result[key] = raw[key]
            else:
                dropped.append(key)
    metrics = raw.get("metrics")
    if isinstance(metrics, dict):
        result["metrics"] = {key: float(value) for key, value in metrics.items() if _finite(value)}
        dropped += [f"metrics.{key}" for key, value in metrics.items() if not _finite(value)]
    elif metrics is not None:
        dropped.append("metrics")
    non_finite = raw.get("nonFinite")
    if isinstance(non_finite, list):
        dropped += [str(name)[:100] for name in non_finite[:20]]
    return result, dropped


def _job_condition_reason(job: dict) -> str:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in FAILED_CONDITIONS and condition.get("status") == "True":
            return condition.get("reason") or ""
    return ""


def _job_condition_message(job: dict) -> str:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in FAILED_CONDITIONS and condition.get("status") == "True":
            return f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".strip(": ")
    return ""


def _last_condition_time(job: dict) -> str | None:
    times = [condition.get("lastTransitionTime") for condition in (job.get("status") or {}).get("conditions") or []]
    return max((time for time in times if time), default=None)


def _summarize(spec: RunSpec, enabled: list[str], status: RunStatus, now: datetime,
               progressing: tuple[bool, str, str], stopping: bool) -> None:
    phases = [status.stages[stage].phase for stage in enabled] + (["Running"] if stopping else [])
    if "Failed" in phases:
        status.phase = "Failed"
    elif all(phase == "Succeeded" for phase in phases):
        status.phase = "Succeeded"
    elif spec.suspend:
        status.phase = "Suspended"
    elif any(phase in ("Running", "Succeeded") for phase in phases):
        status.phase = "Running"
    else:
        status.phase = "Pending"
    if status.phase in ("Succeeded", "Failed"):
        status.completion_time = status.completion_time or _stamp(now)
    else:
        status.completion_time = None
    status.accuracy = _headline(enabled, status)
    on, reason, message = progressing
    _condition(status, "Progressing", on, reason, message, now)
    failed = status.phase == "Failed"
    _condition(status, "Succeeded", status.phase == "Succeeded", "AllStagesSucceeded" if status.phase == "Succeeded"
               else status.phase, "every stage succeeded" if status.phase == "Succeeded" else message, now)
    _condition(status, "Failed", failed, "StageFailed" if failed else "NoFailure", message if failed else "", now)
    _condition(status, "Suspended", spec.suspend, "Suspended" if spec.suspend else "NotSuspended",
               "spec.suspend is true" if spec.suspend else "", now)


def _headline(enabled: list[str], status: RunStatus) -> str | None:
    """The last stage's accuracy that has one (eval's pass@1 on the first benchmark, when eval ran)."""
    for stage in reversed(enabled):
        accuracy = status.stages[stage].accuracy
        if accuracy is not None:
            return f"{accuracy * 100:.1f}%"
    return status.accuracy


def _condition(status: RunStatus, kind: str, on: bool, reason: str, message: str, now: datetime) -> None:
    value = "True" if on else "False"
    for condition in status.conditions:
        if condition.type == kind:
            if condition.status != value:
                condition.last_transition_time = _stamp(now)
            condition.status, condition.reason, condition.message = value, reason, message
            condition.observed_generation = status.observed_generation
            return
    status.conditions.append(Condition.model_validate({
        "type": kind, "status": value, "reason": reason, "message": message,
        "lastTransitionTime": _stamp(now), "observedGeneration": status.observed_generation}))
    status.conditions.sort(key=lambda condition: CONDITION_TYPES.index(condition.type)
                           if condition.type in CONDITION_TYPES else len(CONDITION_TYPES))


def transition_events(before: RunStatus, after: RunStatus, generation: int) -> list[Event]:
    """One event per change a user would want in ``kubectl describe``: stages, the run, conditions."""
    events = []
    if before.observed_generation is not None and generation != before.observed_generation \
            and any(stage.job for stage in before.stages.values()):
        waiting = [name for name, stage in after.stages.items() if not stage.job]
        events.append(Event("Normal", "SpecChanged", "the new spec applies to stages not started yet ("
                            + (", ".join(waiting) or "none") + "); started stages keep the plan they began with"))
    for name, stage in after.stages.items():
        old = before.stages.get(name, StageStatus())
        events += _stage_events(name, old, stage)
    old_conditions = {condition.type: condition for condition in before.conditions}
    for condition in after.conditions:
        old = old_conditions.get(condition.type)
        changed = old is None or (old.status, old.reason, old.message) != (condition.status, condition.reason,
                                                                           condition.message)
        if not changed:
            continue
        if condition.type == "Ready" and condition.status == "False":
            events.append(Event("Warning", condition.reason, condition.message))
        if condition.type == "Progressing" and condition.reason in IMAGE_ERRORS | STUCK_REASONS:
            events.append(Event("Warning", condition.reason, condition.message))
    if before.phase != after.phase:
        if after.phase == "Succeeded":
            events.append(Event("Normal", "RunSucceeded", "every stage succeeded"
                                + (f"; accuracy {after.accuracy}" if after.accuracy else "")))
        elif after.phase == "Suspended":
            events.append(Event("Normal", "Suspended", f"run suspended at stage {after.stage}"))
        elif before.phase == "Suspended":
            events.append(Event("Normal", "Resumed", f"run resumed at stage {after.stage}"))
    return events


def _stage_events(name: str, old: StageStatus, new: StageStatus) -> list[Event]:
    if new.restarts > old.restarts:
        return [Event("Warning", "StageRestarted", f"stage {name}: {new.message}")]
    if new.retries > old.retries:
        return [Event("Normal", "StageRetried", f"stage {name}: retry {new.retries} requested; Job {new.job} "
                                                f"resumes from the stage's last checkpoint in the run's folder")]
    if old.phase == new.phase and old.attempts == new.attempts:
        return []
    if new.phase == "Succeeded":
        accuracy = f", accuracy {new.accuracy * 100:.1f}%" if new.accuracy is not None else ""
        duration = f" in {new.duration_seconds:.0f} s" if new.duration_seconds is not None else ""
        return [Event("Normal", "StageSucceeded", f"stage {name} succeeded{duration}{accuracy}")]
    if new.phase == "Failed":
        return [Event("Warning", "StageFailed", f"stage {name} failed: {new.message}")]
    if new.phase == "Stopped":
        return [Event("Normal", "StageStopped", f"stage {name} {new.message}")]
    if new.attempts > max(old.attempts, 1):
        return [Event("Warning", "StageRetrying", f"stage {name}: {new.message}, resuming from its last checkpoint")]
    if new.phase == "Running" and old.phase != "Running":
        return [Event("Normal", "StageRunning", f"stage {name} running on Job {new.job}")]
    if new.phase == "Pending" and old.phase == "Pending" and old.job is None and new.job:
        return [Event("Normal", "StageCreated", f"stage {name}: Job {new.job} created ({new.gpus or 0} GPUs)")]
    return []


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_since(stamp: str | None, now: datetime) -> float | None:
    since = _parse(stamp)
    return None if since is None else (now - since).total_seconds()


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _seconds(start: str | None, end: str | None) -> float | None:
    began, ended = _parse(start), _parse(end)
    return None if began is None or ended is None else (ended - began).total_seconds()
