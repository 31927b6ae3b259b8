"""``rto train <stage> --plan plan.json``: run one stage the way its pod does.

Starts the metrics endpoint, runs the stage's recipe, writes results.json and the pod
termination message. Exit codes: 0 done, 1 failed (the reason is in the termination
message), 143 stopped by SIGTERM after saving a checkpoint (a rerun resumes from it). A stage
whose results.json says it succeeded is not trained again: its results are reported as they are.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from datetime import datetime, timezone

from . import console
from .checkpoints import StopRequest, read_json, write_json
from .console import StageProgress
from .data.sources import DataError
from .job import StageJob, load_job
from .metrics import StageMetrics
from .stage_result import StageResult, termination_message, write_termination_message
from .tracking import Trackers
from .training import StageInterrupted, is_main_process

log = logging.getLogger(__name__)

# The recipe module of each stage; each has run(job, metrics, stop) -> StageResult.
RECIPES = {"select": "select", "sft": "sft", "rl": "rl", "eval": "eval"}
EXIT_INTERRUPTED = 143


def main(stage: str, plan_path: str, metrics_port: int | None = None) -> int:
    try:
        job = load_job(plan_path)
        job.stage_plan(stage)  # fails early, naming the enabled stages, for a stage the plan lacks
    except (OSError, ValueError, KeyError) as error:
        reason = f"cannot run stage {stage} from {plan_path}: {error}"
        log.error("%s", reason)
        write_termination_message(termination_message(stage, "Failed", 0.0, reason=reason))
        return 2
    finished = read_json(job.paths.results(stage))
    if finished and finished.get("phase") == "Succeeded":
        # A Job created again (its first one was cleaned up before the operator read the result)
        # reports the stage's results instead of training it twice.
        log.info("stage %s already succeeded (%s); reporting its results", stage, job.paths.results(stage))
        write_termination_message(termination_message(stage, "Succeeded", finished["durationSeconds"], StageResult(
            finished.get("accuracy"), finished.get("metrics") or {}, finished.get("checkpoint"))))
        return 0
    metrics = StageMetrics(job.run, job.namespace, stage)
    metrics.serve(metrics_port)
    if is_main_process():  # one progress display and one set of tracking runs per stage, from rank 0
        metrics.trackers = Trackers.open(job.spec.tracking, job.paths.stage(stage), job.run, job.namespace, stage)
        metrics.display = StageProgress(stage)
    console.quiet_libraries()
    try:
        code = _run_stage(job, stage, metrics)
    finally:
        if metrics.display is not None:
            metrics.display.close()
        if metrics.trackers is not None:
            metrics.trackers.close()
    if code != EXIT_INTERRUPTED:  # a stopped pod spends its grace period on the checkpoint instead
        metrics.linger()
    return code


# Every stage starts from the same random state, whatever ran before it in the process (a test
# session, a notebook): a new classification head, dropout and sampling then repeat run after run.
STAGE_SEED = 0


def _run_stage(job: StageJob, stage: str, metrics: StageMetrics) -> int:
    from transformers import set_seed

    set_seed(STAGE_SEED)
    stop = StopRequest().install()
    started, started_at = time.monotonic(), _now()
    try:
        result = _recipe(stage).run(job, metrics, stop)
    except StageInterrupted as interrupted:
        write_termination_message(termination_message(stage, "Interrupted", time.monotonic() - started,
                                                      reason=str(interrupted)))
        log.warning("%s", interrupted)
        return EXIT_INTERRUPTED
    except Exception as error:
        # Data the spec points at names its field and fix; a traceback would only bury it.
        detail = str(error) if isinstance(error, DataError) else traceback.format_exc()
        log.error("stage %s failed:\n%s", stage, detail)
        write_termination_message(termination_message(stage, "Failed", time.monotonic() - started,
                                                      reason=f"{type(error).__name__}: {error}"))
        return 1
    duration = time.monotonic() - started
    metrics.progress(1.0)
    if metrics.flops_by_role:
        result.metrics["flops"] = metrics.flops_total
    # What the stage cost in GPU time: its planned GPUs for as long as it ran (0 on the CPU).
    result.metrics["gpu_hours"] = job.stage_plan(stage)["gpus"] * duration / 3600
    if not is_main_process():
        return 0  # rank 0 writes the stage's results
    _write_results(job, stage, result, duration, started_at, metrics)
    write_termination_message(termination_message(stage, "Succeeded", duration, result))
    return 0


def _recipe(stage: str):
    return importlib.import_module(f".{RECIPES[stage]}", __package__)


def _write_results(job: StageJob, stage: str, result: StageResult, duration: float, started_at: str,
                   metrics: StageMetrics) -> None:
    write_json(job.paths.results(stage), {
        "run": job.run, "stage": stage, "phase": "Succeeded",
        "startTime": started_at, "completionTime": _now(), "durationSeconds": round(duration, 2),
        "accuracy": result.accuracy, "checkpoint": result.checkpoint, "metrics": result.metrics,
        "details": result.details, "plan": job.stage_plan(stage), "history": metrics.history,
        "peakMemoryBytes": _peak_memory(), "flops": metrics.flops_by_role,
    })


def _peak_memory() -> dict[str, int]:
    """Peak tensor memory per GPU, or the process's peak resident memory on CPU."""
    import torch

    if torch.cuda.is_available():
        return {f"cuda:{i}": torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())}
    import resource

    return {"cpu": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
