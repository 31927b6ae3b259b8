"""kopf handlers: a few lines each around the pure core.

Every handler runs the same level-triggered reconcile: read the run and its Jobs and Pods
afresh, let ``admission`` and ``progress`` decide, create or remove at most one stage's
children, patch the status, post the events. Create, update and resume react at once; a
timer repeats the pass every ``resyncSeconds`` to follow the Jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from prometheus_client import start_http_server

from reasoning_trainer.schema import GROUP, PLURAL, VERSION

from .admission import Rejected, admit
from .config import OperatorConfig
from .desired import RUN_LABEL, STAGE_LABEL, Run, job_name, stage_children, volume_claim
from .kube import Kube
from .metrics import OperatorMetrics
from .progress import Decision, Observed, decide, load_status, rejected

log = logging.getLogger(__name__)


@dataclass
class Operator:
    """What every handler shares; kept in kopf's operator-wide memo."""

    config: OperatorConfig
    kube: Kube
    metrics: OperatorMetrics
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    def lock(self, run: Run) -> asyncio.Lock:
        return self.locks.setdefault((run.namespace, run.name), asyncio.Lock())


def credentials(settings: kopf.OperatorSettings, logger, memo: kopf.Memo) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then kubeconfig; a connection put in the memo wins (tests)."""
    if memo.get("connection") is not None:
        return memo["connection"]
    return (kopf.login_with_service_account(settings=settings, logger=logger)
            or kopf.login_via_client(settings=settings, logger=logger))


WEBHOOK_ID = "validate"


def build_registry(config: OperatorConfig, webhook: bool = False,
                   registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    registry = registry or kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    def login(settings, logger, memo, **_):
        return credentials(settings, logger, memo)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger, memo: kopf.Memo, **_):
        # kopf keeps its own bookkeeping in annotations under our group; the CRD's status schema is ours.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.posting.reporting_component = "reasoning-operator"
        settings.posting.level = logging.WARNING  # our events are posted explicitly, not from logs
        connection = credentials(settings, logger, memo)
        memo.operator = Operator(config, Kube(connection, lambda: credentials(settings, logger, memo)),
                                 OperatorMetrics())
        if config.metrics_port:
            start_http_server(config.metrics_port, registry=memo.operator.metrics.registry)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_):
        await memo.operator.kube.close()

    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    @kopf.on.resume(*resource, registry=registry)
    async def changed(body, memo, **_):
        await reconcile(memo.operator, body, "change")

    # Finished runs need no polling: a spec change (enabling another stage) arrives as an update.
    @kopf.timer(*resource, interval=config.resync_seconds, when=_unfinished, registry=registry)
    async def resync(body, memo, **_):
        await reconcile(memo.operator, body, "resync")

    @kopf.on.delete(*resource, optional=True, registry=registry)
    async def deleted(body, memo, **_):
        # The Jobs, ConfigMaps, Services and the created claim go with the run (ownerReferences).
        run = Run.from_body(body)
        memo.operator.metrics.forget(run.namespace, run.name)
        memo.operator.locks.pop((run.namespace, run.name), None)

    if webhook:
        # Served at /validate, the path the chart's ValidatingWebhookConfiguration calls.
        @kopf.on.validate(*resource, id=WEBHOOK_ID, operation="CREATE", registry=registry)
        @kopf.on.validate(*resource, id=WEBHOOK_ID, operation="UPDATE", registry=registry)
        def validate(body, **_):
            check_admission(body)

    return registry


def check_admission(body: dict[str, Any]) -> None:
    """The webhook's answer: the same checks the reconciler makes, refused at the API server."""
    try:
        admit(dict(body))
    except Rejected as rejection:
        raise kopf.AdmissionError(f"{rejection.reason}: {rejection}", code=422) from None


async def reconcile(operator: Operator, body: dict[str, Any], handler: str) -> None:
    run = Run.from_body(body)
    started = time.perf_counter()
    async with operator.lock(run):
        try:
            await _reconcile(operator, run)
        except Exception as error:
            operator.metrics.errors.labels(type(error).__name__).inc()
            raise
        finally:
            operator.metrics.handler_duration.labels(handler).observe(time.perf_counter() - started)


async def _reconcile(operator: Operator, run: Run) -> None:
    kube = operator.kube
    fresh = await kube.get("ReasoningTraining", run.namespace, run.name)
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        return
    stored = fresh.get("status") or {}
    generation = fresh["metadata"].get("generation", 1)
    now = datetime.now(timezone.utc)
    try:
        admitted = admit(fresh)
    except Rejected as rejection:
        decision = rejected(generation, stored, rejection.reason, str(rejection), now)
    else:
        observed = await observe(kube, run, now)
        decision = decide(run, generation, admitted.spec, admitted.plan, stored, observed,
                          operator.config.stuck_after_seconds)
        await act(operator, run, admitted, decision)
    patch = merge_patch(stored, decision.status_patch())
    if patch:
        await kube.patch_status("ReasoningTraining", run.namespace, run.name, patch)
    for event in decision.events:
        kopf.event(fresh, type=event.type, reason=event.reason, message=event.message)
    operator.metrics.observe(run.namespace, run.name, load_status(stored), decision.status)


async def observe(kube: Kube, run: Run, now: datetime) -> Observed:
    """The run's Jobs by stage (only this incarnation's, by owner uid) and each Job's pods."""
    jobs, pods = await asyncio.gather(kube.list("Job", run.namespace, {RUN_LABEL: run.name}),
                                      kube.list("Pod", run.namespace, {RUN_LABEL: run.name}))
    by_stage = {job["metadata"]["labels"][STAGE_LABEL]: job for job in jobs if _owned_by(job, run.uid)}
    pods_by_stage = {stage: [pod for pod in pods if _owned_by(pod, job["metadata"]["uid"])]
                     for stage, job in by_stage.items()}
    return Observed(by_stage, pods_by_stage, now)


async def act(operator: Operator, run: Run, admitted, decision: Decision) -> None:
    kube, spec = operator.kube, admitted.spec
    if decision.create:
        claim = volume_claim(run, spec)
        if claim is not None:
            await kube.create(claim)
        image = spec.image or operator.config.trainer_image
        for child in stage_children(run, spec, admitted.plan, decision.create, image, operator.config):
            await kube.create(child)
    if decision.remove:
        await kube.delete("Job", run.namespace, job_name(run.name, decision.remove))


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


def _unfinished(status, **_) -> bool:
    return (status or {}).get("phase") not in ("Succeeded", "Failed")


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(owner.get("uid") == uid for owner in obj["metadata"].get("ownerReferences") or [])
