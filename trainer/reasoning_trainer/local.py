"""``rto run -f run.yaml --local``: every stage of a run on this machine, in order, each in its
own process exactly as ``rto train`` runs in a stage pod, then a summary and report.html.

Stages that already succeeded (their results.json exists) are not run again, so an
interrupted local run picks up where it stopped; ``--restart`` starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .checkpoints import read_json, write_json
from .console import duration
from .job import RunPaths, plan_document
from .planner import plan_run
from .schema import load_run_file


def main(filename: str, output: str, restart: bool = False, gpu_memory: str | None = None) -> int:
    name, spec = load_run_file(filename)
    plan = plan_run(spec, gpu_memory)
    paths = RunPaths(Path(output) / name)
    if restart and paths.root.exists():
        shutil.rmtree(paths.root)
    plan_path = paths.root / "plan.json"
    write_json(plan_path, plan_document(name, "local", spec, plan, str(paths.root.resolve())))
    print(f"run '{name}': stages {', '.join(spec.enabled_stages())}; outputs in {paths.root}")
    for stage in spec.enabled_stages():
        if read_json(paths.results(stage)):
            print(f"[{stage}] already done ({paths.results(stage)}); --restart runs it again")
            continue
        print(f"[{stage}] starting", flush=True)
        code = _run_stage(stage, plan_path, paths)
        if code != 0:
            reason = _termination_reason(paths, stage)
            print(f"[{stage}] failed (exit {code}): {reason}", file=sys.stderr)
            return 1
        print(result_line(stage, read_json(paths.results(stage))), flush=True)
    results = {stage: read_json(paths.results(stage)) for stage in spec.enabled_stages()}
    print(summary_table(results))
    from .report import write_report  # matplotlib is only needed here

    report = write_report(name, results, paths.root / "report.html")
    print(f"report: {report}")
    return 0


def _run_stage(stage: str, plan_path: Path, paths: RunPaths) -> int:
    env = dict(os.environ)
    env["RTO_TERMINATION_LOG"] = str(paths.stage(stage) / "termination-log")
    paths.stage(stage).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "reasoning_trainer.cli", "train", stage, "--plan", str(plan_path)]
    return subprocess.call(command, env=env)


def _termination_reason(paths: RunPaths, stage: str) -> str:
    log = paths.stage(stage) / "termination-log"
    if not log.is_file():
        return "no termination message (see the output above)"
    return json.loads(log.read_text()).get("reason", "unknown")


def result_line(stage: str, result: dict) -> str:
    """What a finished stage achieved, what it took, and its memory against the plan's estimate."""
    parts = [f"[{stage}] done in {duration(result['durationSeconds'])}"]
    if result.get("accuracy") is not None:
        parts.append(f"accuracy {result['accuracy']:.1%}")
    highlights = _highlights(result.get("metrics") or {}, 3)
    if highlights:
        parts.append(highlights)
    peak = max((result.get("peakMemoryBytes") or {}).values(), default=None)
    if peak:
        planned = (result.get("plan") or {}).get("memory_gib")
        parts.append(f"peak memory {peak / 2**30:.2f} GiB" + (f" (planned {planned:.2f})" if planned else ""))
    return "; ".join(parts)


def summary_table(results: dict[str, dict]) -> str:
    rows = [["STAGE", "TIME", "ACCURACY", "HIGHLIGHTS"]]
    for stage, result in results.items():
        accuracy = result.get("accuracy")
        rows.append([stage, f"{result['durationSeconds']:.0f}s",
                     "-" if accuracy is None else f"{accuracy:.1%}", _highlights(result["metrics"])])
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths)), row[3]]) for row in rows)


def _highlights(metrics: dict, most: int = 6) -> str:
    shown = []
    for key, value in metrics.items():
        if isinstance(value, float):
            shown.append(f"{key} {value:.3f}")
        else:
            shown.append(f"{key} {value}")
    return ", ".join(shown[:most])
