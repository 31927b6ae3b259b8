"""The operator's Prometheus metrics, defined once (the dashboard and the tests read these names)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from reasoning_trainer.schema.run import RunStatus

PHASES = RunStatus.model_fields["phase"].annotation.__args__
STAGE_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600)
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# name -> (kind, help, labels)
METRICS = {
    "rto_operator_runs": ("gauge", "ReasoningTrainings by phase.", ("phase",)),
    "rto_operator_stage_failed": ("gauge", "1 for each stage that failed in a run that still exists.",
                                  ("namespace", "run", "stage")),
    "rto_operator_stage_transitions_total": ("counter", "Stage phase changes, by run.",
                                             ("namespace", "run", "stage", "phase")),
    "rto_operator_stage_duration_seconds": ("histogram", "Duration of succeeded stages.", ("stage",)),
    "rto_operator_reconcile_errors_total": ("counter", "Reconcile passes that raised, by error type.", ("error",)),
    "rto_operator_handler_duration_seconds": ("histogram", "Wall time of one reconcile pass.", ("handler",)),
    "rto_operator_api_requests_total": ("counter", "Requests the reconciler sent to the API server (watch "
                                        "streams not included), by verb, resource and status code.",
                                        ("verb", "resource", "code")),
}


class _RunPhases:
    """Collects the runs' state at scrape time from the last status seen of each run: runs by phase,
    and the failed stages (a state to alert on, as kube-state-metrics' kube_job_failed, rather
    than a counter that starts at 1 and so never shows an increase)."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str], str] = {}
        self.failed: dict[tuple[str, str], list[str]] = {}

    def collect(self):
        runs = GaugeMetricFamily("rto_operator_runs", METRICS["rto_operator_runs"][1], labels=["phase"])
        for phase in PHASES:
            runs.add_metric([phase], sum(1 for seen in self.phases.values() if seen == phase))
        failed = GaugeMetricFamily("rto_operator_stage_failed", METRICS["rto_operator_stage_failed"][1],
                                   labels=["namespace", "run", "stage"])
        for (namespace, name), stages in self.failed.items():
            for stage in stages:
                failed.add_metric([namespace, name, stage], 1)
        yield runs
        yield failed


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = _RunPhases()
        self.registry.register(self.runs)
        self.transitions = Counter("rto_operator_stage_transitions", METRICS["rto_operator_stage_transitions_total"][1],
                                   ["namespace", "run", "stage", "phase"], registry=self.registry)
        # The transition series of each run, removed with the run so deleted runs do not pile up.
        self._series: dict[tuple[str, str], set[tuple[str, str, str, str]]] = {}
        self.stage_duration = Histogram("rto_operator_stage_duration_seconds",
                                        METRICS["rto_operator_stage_duration_seconds"][1], ["stage"],
                                        buckets=STAGE_BUCKETS, registry=self.registry)
        self.errors = Counter("rto_operator_reconcile_errors", METRICS["rto_operator_reconcile_errors_total"][1],
                              ["error"], registry=self.registry)
        self.api_requests = Counter("rto_operator_api_requests", METRICS["rto_operator_api_requests_total"][1],
                                    ["verb", "resource", "code"], registry=self.registry)
        self.handler_duration = Histogram("rto_operator_handler_duration_seconds",
                                          METRICS["rto_operator_handler_duration_seconds"][1], ["handler"],
                                          buckets=HANDLER_BUCKETS, registry=self.registry)

    def observe(self, namespace: str, name: str, before: RunStatus, after: RunStatus) -> None:
        self.runs.phases[(namespace, name)] = after.phase
        self.runs.failed[(namespace, name)] = [stage for stage, status in after.stages.items()
                                               if status.phase == "Failed"]
        for stage, status in after.stages.items():
            old = before.stages.get(stage)
            if old is not None and old.phase == status.phase:
                continue
            labels = (namespace, name, stage, status.phase)
            self.transitions.labels(*labels).inc()
            self._series.setdefault((namespace, name), set()).add(labels)
            if status.phase == "Succeeded" and status.duration_seconds is not None:
                self.stage_duration.labels(stage).observe(status.duration_seconds)

    def forget(self, namespace: str, name: str) -> None:
        self.runs.phases.pop((namespace, name), None)
        self.runs.failed.pop((namespace, name), None)
        for labels in self._series.pop((namespace, name), set()):
            self.transitions.remove(*labels)
