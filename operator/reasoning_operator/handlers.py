"""kopf handlers: a few lines each around the pure core.

Three watches (runs, and the Jobs and Pods labelled with a run) fill the ``Cache`` and queue the
run each event concerns; workers take runs off the ``WorkQueue`` and reconcile them. A pass reads
the run, its Jobs and its Pods from the cache, lets ``admission`` and ``progress`` decide, creates
or removes at most one stage's children, patches the status (only if it changed, and only if the
run did not change meanwhile), then posts the events. A Job that finishes queues its run at once,
so the next stage starts within a moment; a timer queues every run each ``resyncSeconds`` as a
safety net, which costs no API request for a run that did not change.

Only watch events are used (no kopf create/update handlers): kopf then keeps no bookkeeping
annotations and no finalizer on the runs, so deleting a run never waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from prometheus_client import start_http_server

from reasoning_trainer.schema import GROUP, PLURAL, VERSION

from . import jobset
from .admission import Admitted, Rejected, admit
from .cache import Cache, RunKey, WorkQueue, run_key
from .config import OperatorConfig
from .desired import RUN_LABEL, STAGE_LABEL, Run, job_name, stage_children, volume_claim
from .kube import ApiError, Discovery, Kube
from .metrics import OperatorMetrics
from .progress import Decision, Observed, decide, job_outcome, load_status, refuse_child, rejected

log = logging.getLogger(__name__)

WEBHOOK_ID = "validate"
# Finalizer of operator versions that used kopf's create/update handlers; removed from runs on sight.
LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
# Back-off of a run whose pass failed (API refusal, network): doubling up to the cap.
RETRY_SECONDS, RETRY_CAP_SECONDS = 1.0, 300.0
# A Job with no pod this long is asked about (its FailedCreate events): the controller creates a
# pod within a second or two, and retries a refused create with back-off.
CREATE_GRACE_SECONDS = 10.0
# How often a running JobSet stage is read: the operator watches Jobs and Pods, not JobSets.
JOBSET_POLL_SECONDS = 5.0
# Statuses of a create the API server refused (bad request, forbidden by RBAC, quota or admission,
# a kind it does not serve, such as Volcano's PodGroup without Volcano, invalid): the run records
# them; retrying at once cannot help.
REFUSED = (400, 403, 404, 422)


class ChildRefused(Exception):
    def __init__(self, kind: str, name: str, error: ApiError):
        super().__init__(f"{kind} {name} refused: {error}")
        self.kind, self.name, self.error = kind, name, error


@dataclass
class Operator:
    """What every handler shares; kept in kopf's operator-wide memo."""

    config: OperatorConfig
    kube: Kube
    metrics: OperatorMetrics
    cache: Cache = field(default_factory=Cache)
    queue: WorkQueue = field(default_factory=WorkQueue)
    failures: dict[RunKey, int] = field(default_factory=dict)
    # admission is pure in the spec: keep its verdict per (uid, generation) instead of re-planning every pass
    admitted: dict[tuple[str, int], Admitted | Rejected] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)
    jobsets: Discovery = field(init=False)

    def __post_init__(self) -> None:
        self.jobsets = Discovery(self.kube, jobset.API_VERSION, jobset.PLURAL)


def credentials(settings: kopf.OperatorSettings, logger, memo: kopf.Memo) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then kubeconfig; a connection put in the memo wins (tests)."""
    if memo.get("connection") is not None:
        return memo["connection"]
    return (kopf.login_with_service_account(settings=settings, logger=logger)
            or kopf.login_via_client(settings=settings, logger=logger))


def build_registry(config: OperatorConfig, webhook: bool = False,
                   registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    registry = registry or kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    def login(settings, logger, memo, **_):
        return credentials(settings, logger, memo)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger, memo: kopf.Memo, **_):
        settings.posting.enabled = False  # our events are posted explicitly (Kube.post_event), not from logs
        # The API server sends only the run's children, not every Job and Pod of the namespace.
        settings.watching.label_selectors["batch", "jobs"] = RUN_LABEL
        settings.watching.label_selectors["", "pods"] = RUN_LABEL
        connection = credentials(settings, logger, memo)
        metrics = OperatorMetrics()
        kube = Kube(connection, lambda: credentials(settings, logger, memo), counter=metrics.api_requests)
        operator = memo.operator = Operator(config, kube, metrics)
        if config.metrics_port:
            start_http_server(config.metrics_port, registry=operator.metrics.registry)
        operator.tasks = [asyncio.create_task(work(operator)) for _ in range(config.workers)]
        operator.tasks.append(asyncio.create_task(resync(operator)))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_):
        for task in memo.operator.tasks:
            task.cancel()
        await asyncio.gather(*memo.operator.tasks, return_exceptions=True)
        await memo.operator.kube.close()

    @kopf.on.event(*resource, registry=registry)
    def run_event(type, body, memo, **_):
        operator: Operator = memo.operator
        deleted = type == "DELETED"
        operator.cache.store_run(dict(body), deleted=deleted)
        key = run_key(body)
        if deleted:
            # The Jobs, ConfigMaps, Services and the created claim go with the run (ownerReferences).
            operator.metrics.forget(*key)
            operator.failures.pop(key, None)
        else:
            operator.queue.add(key)

    @kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT}, registry=registry)
    def job_event(type, body, memo, **_):
        child_event(memo.operator, "Job", type, body)

    @kopf.on.event("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT}, registry=registry)
    def pod_event(type, body, memo, **_):
        child_event(memo.operator, "Pod", type, body)

    if webhook:
        # Served at /validate, the path the chart's ValidatingWebhookConfiguration calls.
        @kopf.on.validate(*resource, id=WEBHOOK_ID, operation="CREATE", registry=registry)
        @kopf.on.validate(*resource, id=WEBHOOK_ID, operation="UPDATE", registry=registry)
        def validate(body, **_):
            check_admission(body)

    return registry


def child_event(operator: Operator, kind: str, type: str | None, body: kopf.Body) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["labels"][RUN_LABEL])
    operator.cache.store_child(kind, key, dict(body), deleted=type == "DELETED")
    if key in operator.cache.runs:
        operator.queue.add(key)


def check_admission(body: dict[str, Any]) -> None:
    """The webhook's answer: the same checks the reconciler makes, refused at the API server."""
    try:
        admit(dict(body))
    except Rejected as rejection:
        raise kopf.AdmissionError(f"{rejection.reason}: {rejection}", code=422) from None


async def work(operator: Operator) -> None:
    """One worker: take a run, reconcile it; on failure, try it again later with back-off."""
    while True:
        key = await operator.queue.get()
        try:
            await reconcile(operator, key)
        except Exception as error:  # one run's failure must not stop the others
            failures = operator.failures[key] = operator.failures.get(key, 0) + 1
            delay = min(RETRY_SECONDS * 2 ** (failures - 1), RETRY_CAP_SECONDS)
            log.warning("%s/%s: reconcile failed (%s); again in %.0f s", *key, error, delay)
            operator.queue.add_later(key, delay)
        else:
            operator.failures.pop(key, None)
        finally:
            operator.queue.done(key)


async def resync(operator: Operator) -> None:
    """The safety net behind the watches: every run gets a pass each resync period."""
    while True:
        await asyncio.sleep(operator.config.resync_seconds)
        operator.queue.add_all(list(operator.cache.runs))


async def reconcile(operator: Operator, key: RunKey) -> None:
    started = time.perf_counter()
    try:
        await _reconcile(operator, key)
    except Exception as error:
        operator.metrics.errors.labels(type(error).__name__).inc()
        raise
    finally:
        operator.metrics.handler_duration.labels("reconcile").observe(time.perf_counter() - started)


async def _reconcile(operator: Operator, key: RunKey) -> None:
    body = operator.cache.runs.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    kube, run = operator.kube, Run.from_body(body)
    await _drop_legacy_finalizer(kube, body)
    stored = body.get("status") or {}
    generation = body["metadata"].get("generation", 1)
    now = datetime.now(timezone.utc)
    refusal = None
    verdict = _admission(operator, body)
    if isinstance(verdict, Rejected):
        decision = rejected(generation, stored, verdict.reason, str(verdict), now)
    else:
        observed = await observe(operator, run, load_status(stored), now)
        decision = decide(run, generation, verdict.spec, verdict.plan, stored, observed,
                          operator.config.stuck_after_seconds)
        try:
            await act(operator, run, verdict, decision)
        except ChildRefused as refused:
            refuse_child(decision, load_status(stored), generation, refused.kind, refused.name,
                         refused.error.reason, refused.error.message, now)
            refusal = refused
    patch = merge_patch(stored, decision.status_patch(stored))
    if patch:
        try:
            written = await kube.patch_status("ReasoningTraining", run.namespace, run.name, patch,
                                              body["metadata"].get("resourceVersion"))
        except ApiError as error:
            if error.status != 409:
                raise
            # The run changed since the cache saw it: read it afresh and decide again.
            fresh = await kube.get("ReasoningTraining", run.namespace, run.name)
            if fresh is not None:
                operator.cache.store_run(fresh)
            operator.queue.add(key)
            return
        operator.cache.store_run(written)
        dropped = _dropped_fields(patch, written.get("status") or {})
        if dropped:
            log.error("%s/%s: the API server dropped status fields %s: the installed CRD is older than this "
                      "operator; apply manifests/crd.yaml (or helm upgrade)", *key, ", ".join(dropped))
    for event in decision.events:
        await kube.post_event(body, event.type, event.reason, event.message)
    operator.metrics.observe(run.namespace, run.name, load_status(stored), decision.status)
    if refusal is not None:
        raise refusal  # the worker tries the run again with back-off


def _admission(operator: Operator, body: dict[str, Any]) -> Admitted | Rejected:
    meta = body["metadata"]
    key = (meta["uid"], meta.get("generation", 1))
    if key not in operator.admitted:
        if len(operator.admitted) > 4 * max(len(operator.cache.runs), 256):
            operator.admitted.clear()
        try:
            operator.admitted[key] = admit(body)
        except Rejected as rejection:
            operator.admitted[key] = rejection
    return operator.admitted[key]


async def observe(operator: Operator, run: Run, stored, now: datetime) -> Observed:
    """The run's Jobs by stage (only this incarnation's, by owner uid) and each Job's pods, from the
    cache. A Job the status names but the cache lacks is looked up: the cache may not have seen it
    yet (just created, or the operator just started), or it was deleted."""
    key = (run.namespace, run.name)
    cache = operator.cache
    jobs = {job["metadata"]["labels"][STAGE_LABEL]: job for job in cache.children("Job", key)
            if _owned_by(job, run.uid)}
    vanished = {}
    for stage, status in stored.stages.items():
        if stage in jobs or not status.job or status.phase not in ("Pending", "Running"):
            continue
        # A multi-node stage on a cluster with JobSet is a JobSet, read afresh each pass: the
        # cache holds Jobs only (the JobSet's own Jobs and pods carry the run's labels and queue it).
        if await operator.jobsets.served():
            found = await operator.kube.get("JobSet", run.namespace, status.job)
            if found is not None and _owned_by(found, run.uid):
                jobs[stage] = jobset.as_stage_job(found)
                if not job_outcome(jobs[stage]):  # JobSet's own changes reach no watch of ours
                    operator.queue.poll(key, JOBSET_POLL_SECONDS)
                continue
        found = await operator.kube.get("Job", run.namespace, status.job)
        if found is not None and _owned_by(found, run.uid):
            cache.store_child("Job", key, found)
            jobs[stage] = found
        else:
            vanished[stage] = (cache.deleted_jobs.get(key) or {}).get(status.job, {})
    pods = cache.children("Pod", key)
    pods_by_stage = {stage: [pod for pod in pods if _made_by(pod, job)] for stage, job in jobs.items()}
    for stage, last in vanished.items():
        uid = (last.get("metadata") or {}).get("uid")
        pods_by_stage[stage] = [pod for pod in pods if uid and _owned_by(pod, uid)]
    # A finished Job's outcome is recorded once, from its pods' termination messages; the Pod watch
    # may not have delivered them yet (separate streams have no order), so read them now.
    for stage, job in {**jobs, **vanished}.items():
        recorded = stored.stages.get(stage)
        if job and recorded and recorded.phase in ("Pending", "Running") and job_outcome(job):
            owner = jobset.UID_LABEL if jobset.is_jobset(job) else "batch.kubernetes.io/controller-uid"
            pods_by_stage[stage] = await operator.kube.list("Pod", run.namespace, {owner: job["metadata"]["uid"]})
    create_failures = {}
    for stage, job in jobs.items():
        waited = (now - _created(job)).total_seconds()
        if not pods_by_stage[stage] and waited >= CREATE_GRACE_SECONDS and not job_outcome(job) \
                and not jobset.is_jobset(job) and not (job.get("spec") or {}).get("suspend"):
            failure = await _create_failure(operator.kube, job)
            if failure:
                create_failures[stage] = failure
    return Observed(jobs, pods_by_stage, now, vanished, create_failures)


async def _create_failure(kube: Kube, job: dict[str, Any]) -> str | None:
    """The Job controller's latest word on why it cannot create the Job's pod (quota, Pod Security,
    a missing service account): only events say so, never the Job's status."""
    meta = job["metadata"]
    events = await kube.list("Event", meta["namespace"], {}, {"involvedObject.kind": "Job",
                                                              "involvedObject.name": meta["name"],
                                                              "reason": "FailedCreate"})
    events = [event for event in events if (event.get("involvedObject") or {}).get("uid") == meta["uid"]]
    if not events:
        return None
    latest = max(events, key=lambda event: event.get("lastTimestamp") or event.get("eventTime") or "")
    return (latest.get("message") or "")[:1000]


def _created(obj: dict[str, Any]) -> datetime:
    stamp = obj["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else datetime.now(timezone.utc)


async def act(operator: Operator, run: Run, admitted: Admitted, decision: Decision) -> None:
    kube, spec = operator.kube, admitted.spec
    if decision.create:
        claim = volume_claim(run, spec)
        if claim is not None:
            await _create(kube, claim)
        image = spec.image or operator.config.trainer_image
        jobsets = admitted.plan.stages[decision.create].nodes > 1 and await operator.jobsets.served()
        for child in stage_children(run, spec, admitted.plan, decision.create, image, operator.config, jobsets):
            created = await _create(kube, child)
            if created is not None and created.get("kind") == "Job":
                # known now, so the next pass need not ask whether the watch has delivered it yet
                operator.cache.store_child("Job", (run.namespace, run.name), created)
    if decision.remove:
        name = job_name(run.name, decision.remove)
        if await operator.jobsets.served():
            await kube.delete("JobSet", run.namespace, name)
        await kube.delete("Job", run.namespace, name)


async def _create(kube: Kube, child: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return await kube.create(child)
    except ApiError as error:
        if error.status in REFUSED:
            if error.status == 404 and "namespaces" not in error.message:
                error.message += f" (this cluster does not serve {child['apiVersion']} {child['kind']})"
            raise ChildRefused(child["kind"], child["metadata"]["name"], error) from None
        raise


async def _drop_legacy_finalizer(kube: Kube, body: dict[str, Any]) -> None:
    finalizers = body["metadata"].get("finalizers") or []
    if LEGACY_FINALIZER in finalizers:
        index = finalizers.index(LEGACY_FINALIZER)
        with contextlib.suppress(ApiError):  # someone else changed the list first: the next pass retries
            await kube.patch("ReasoningTraining", body["metadata"]["namespace"], body["metadata"]["name"],
                             [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": LEGACY_FINALIZER},
                              {"op": "remove", "path": f"/metadata/finalizers/{index}"}])


def _dropped_fields(patch: dict[str, Any], written: dict[str, Any], prefix: str = "status") -> list[str]:
    """Fields the patch set that the stored object lacks: pruned by a CRD that does not know them."""
    dropped = []
    for key, value in patch.items():
        if value is None:
            continue
        if key not in written:
            dropped.append(f"{prefix}.{key}")
        elif isinstance(value, dict) and isinstance(written[key], dict):
            dropped += _dropped_fields(value, written[key], f"{prefix}.{key}")
    return dropped


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from ``old`` to ``new``: changed keys, and null for keys that went away."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif value != before:
            patch[key] = value
    return patch


def _made_by(pod: dict[str, Any], job: dict[str, Any]) -> bool:
    """A pod of the stage's Job, or of one of its JobSet's Jobs."""
    uid = job["metadata"]["uid"]
    if jobset.is_jobset(job):
        return (pod["metadata"].get("labels") or {}).get(jobset.UID_LABEL) == uid
    return _owned_by(pod, uid)


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(owner.get("uid") == uid for owner in obj["metadata"].get("ownerReferences") or [])
