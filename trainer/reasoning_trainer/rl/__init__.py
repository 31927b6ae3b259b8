"""The rl stage: policy optimisation with the algorithm the spec names (rl/grpo.py, rl/pgts.py)."""

from __future__ import annotations

from ..checkpoints import StopRequest
from ..job import StageJob
from ..metrics import StageMetrics
from ..stage_result import StageResult


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    algorithm = job.spec.stages.rl.algorithm
    if algorithm == "grpo":
        from . import grpo

        return grpo.run(job, metrics, stop)
    from . import pgts

    return pgts.run(job, metrics, stop)
