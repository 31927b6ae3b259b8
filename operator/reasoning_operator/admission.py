"""Whether a ReasoningTraining can run on the cluster: the schema, the planner, and what only a
cluster needs (a volume, a name short enough for its Jobs). Used by the reconciler and the
optional validating webhook alike, so both reject the same resources with the same words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reasoning_trainer.planner import PlanError, RunPlan, plan_run
from reasoning_trainer.schema import RunSpec
from reasoning_trainer.schema.errors import Issue, RunValidationError
from reasoning_trainer.schema.validate import validate_resource

from .desired import MAX_RUN_NAME


@dataclass(frozen=True)
class Admitted:
    spec: RunSpec
    plan: RunPlan


class Rejected(ValueError):
    def __init__(self, reason: str, issues: list[Issue]):
        self.reason = reason  # InvalidSpec or PlanFailed: the Ready condition's reason
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))


def admit(resource: dict[str, Any]) -> Admitted:
    """The validated spec and its plan, or Rejected naming every field to fix."""
    try:
        name, spec = validate_resource(_without_status(resource))
    except RunValidationError as error:
        raise Rejected("InvalidSpec", error.issues) from None
    issues = cluster_issues(name, spec)
    if issues:
        raise Rejected("InvalidSpec", issues)
    try:
        plan = plan_run(spec)
    except PlanError as error:
        raise Rejected("PlanFailed", error.issues) from None
    return Admitted(spec, plan)


def _without_status(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: resource[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in resource}


def cluster_issues(name: str, spec: RunSpec) -> list[Issue]:
    """What only a cluster needs of a valid spec; ``rto validate`` reports these too."""
    issues = []
    if len(name) > MAX_RUN_NAME:
        issues.append(Issue("metadata.name", f"at most {MAX_RUN_NAME} characters, got {len(name)}: the stage Jobs "
                                             f"are named <run>-<stage>, their ranks <run>-<stage>-r-0-<rank>, and "
                                             f"Kubernetes caps labels and hostnames at 63"))
    if spec.storage is None:
        issues.append(Issue("spec.storage", "required on a cluster: stages hand checkpoints to each other on a "
                                            "volume; set size: 50Gi (a new claim) or existingClaim: <pvc name>"))
    return issues
