"""``rto``: validate, plan, train and run reasoning post-training pipelines.

Imports stay light at the top: the operator image runs this CLI without torch; the
training commands import their machinery when they are called.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml
from reasoning_operator import commands as operator_commands
from reasoning_operator import main as operator_main

from . import presets
from .planner import PlanError, RunPlan, plan_run
from .schema import RunValidationError, load_run_file, validate_spec
from .schema.errors import Issue
from .schema.run import STAGE_ORDER


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except BrokenPipeError:  # `rto status | head` closed the pipe early: nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rto", description="reasoning-operator: plan and run reasoning-model "
                                                             "post-training pipelines")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    plan = commands.add_parser("plan", help="show GPUs, precision, ZeRO and memory per stage")
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--filename", help="a ReasoningTraining manifest (or a bare spec)")
    source.add_argument("--preset", choices=presets.available(), help="plan a preset as it is")
    plan.add_argument("--gpu-memory", metavar="QUANTITY", type=_quantity,
                      help="memory per GPU, e.g. 24Gi or 80Gi (overrides spec.gpu)")
    plan.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    plan.set_defaults(handler=_plan)

    validate = commands.add_parser("validate", help="check a manifest; exit 1 with field-path messages if invalid")
    validate.add_argument("-f", "--filename", required=True)
    validate.add_argument("--gpu-memory", metavar="QUANTITY", type=_quantity,
                          help="check the plan against this GPU memory")
    validate.add_argument("--local", action="store_true",
                          help="for `rto run --local`: skip what only a cluster needs (spec.storage, a run name "
                               "short enough for its Job names)")
    validate.set_defaults(handler=_validate)

    listing = commands.add_parser("presets", help="list the presets")
    listing.set_defaults(handler=_presets)

    train = commands.add_parser("train", help="run one stage from a plan file (what a stage pod runs)")
    train.add_argument("stage", choices=STAGE_ORDER)
    train.add_argument("--plan", required=True, help="plan file written by the operator or rto run")
    train.add_argument("--metrics-port", type=int, help="Prometheus port (default $RTO_METRICS_PORT or 9400; "
                                                        "0 turns the endpoint off)")
    _console_arguments(train)
    train.set_defaults(handler=_train)

    run = commands.add_parser("run", help="run every stage of a run on this machine (--local)")
    run.add_argument("-f", "--filename", required=True)
    run.add_argument("--local", action="store_true", required=True,
                     help="run here, stage after stage (on a cluster: kubectl apply -f the manifest)")
    run.add_argument("--output", default="outputs", help="folder for the run's outputs (default: outputs)")
    run.add_argument("--restart", action="store_true", help="discard earlier outputs of this run and start over")
    run.add_argument("--gpu-memory", metavar="QUANTITY", type=_quantity, help="plan for this GPU memory")
    _console_arguments(run)
    run.set_defaults(handler=_run)

    compare = commands.add_parser("compare", help="one report comparing runs' outputs (rto run --local folders)")
    compare.add_argument("runs", metavar="RUN_DIR", nargs="+", help="a run's output folder, e.g. outputs/tiny")
    compare.add_argument("--output", default="compare.html", help="the report to write (default: compare.html)")
    compare.set_defaults(handler=_compare)

    operator = commands.add_parser("operator", help="run the Kubernetes operator (needs the [operator] extra)")
    operator_main.add_arguments(operator)
    operator.set_defaults(handler=operator_main.run)

    operator_commands.add_commands(commands)
    return parser


def _console_arguments(parser: argparse.ArgumentParser) -> None:
    from .console import LOG_FORMAT_ENV, VERBOSE_ENV

    parser.add_argument("-v", "--verbose", action="store_true", default=os.environ.get(VERBOSE_ENV) == "1",
                        help="also show the libraries' own logs, progress bars and warnings")
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get(LOG_FORMAT_ENV) or "text",
                        help="json: one JSON object per log line, for a cluster's log pipeline")


def _quantity(value: str) -> str:
    """A memory quantity flag (24Gi), refused by argparse with the way to write it."""
    from .schema.base import quantity_bytes

    try:
        quantity_bytes(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _train(args: argparse.Namespace) -> int:
    from . import console

    console.setup(args.verbose, args.log_format)
    from . import train

    return train.main(args.stage, args.plan, args.metrics_port)


def _run(args: argparse.Namespace) -> int:
    from . import console

    console.setup(args.verbose, args.log_format)
    from . import local

    try:
        return local.main(args.filename, args.output, args.restart, args.gpu_memory)
    except (RunValidationError, PlanError) as error:
        return _fail(error)


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoints import read_json

    runs = {}
    for folder in map(Path, args.runs):
        results = {stage: read_json(folder / stage / "results.json") for stage in STAGE_ORDER}
        results = {stage: result for stage, result in results.items() if result}
        if not results:
            print(f"rto compare: {folder} holds no stage results (<stage>/results.json); name a run's output "
                  f"folder such as outputs/tiny", file=sys.stderr)
            return 1
        runs[folder.name if folder.name not in runs else str(folder)] = results
    from .report import write_comparison

    print(f"comparison: {write_comparison(runs, Path(args.output))} ({', '.join(runs)})")
    return 0


def _plan(args: argparse.Namespace) -> int:
    try:
        if args.preset:
            name, spec = args.preset, validate_spec({"preset": args.preset})
        else:
            name, spec = load_run_file(args.filename)
        plan = plan_run(spec, args.gpu_memory)
    except (RunValidationError, PlanError) as error:
        return _fail(error)
    data = {"run": name, "preset": spec.preset, **plan.to_dict()}
    if args.output == "json":
        print(json.dumps(data, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(render_table(name, spec.preset, plan))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from reasoning_operator.admission import cluster_issues

    try:
        name, spec = load_run_file(args.filename)
        plan_run(spec, args.gpu_memory)
        on_cluster = [] if args.local else cluster_issues(name, spec)
        if on_cluster:  # what the operator and its webhook would refuse, said the same way
            raise RunValidationError([Issue(issue.path, f"{issue.message} [on a cluster; --local skips this]")
                                      for issue in on_cluster])
    except (RunValidationError, PlanError) as error:
        return _fail(error)
    stages = ", ".join(spec.enabled_stages()) or "none"
    print(f"{args.filename}: run '{name}' is valid (preset {spec.preset or 'none'}; stages: {stages})")
    return 0


def _presets(args: argparse.Namespace) -> int:
    for name in presets.available():
        spec = validate_spec({"preset": name})
        generator = spec.models.generator.name if spec.models.generator else "-"
        reward_model = spec.models.reward_model.name if spec.models.reward_model else "-"
        print(f"{name:6} generator {generator:28} reward model {reward_model}")
    return 0


def _fail(error: RunValidationError | PlanError) -> int:
    print("invalid:", file=sys.stderr)
    for issue in error.issues:
        print(f"  {issue}", file=sys.stderr)
    return 1


def render_table(name: str, preset: str | None, plan: RunPlan) -> str:
    where = "CPU" if plan.gpu_memory_gib is None else f"{plan.gpu_memory_gib:g} GiB GPUs"
    memory = "MEMORY" if plan.gpu_memory_gib is None else "MEM/GPU"
    header = ["STAGE", "GPUS", "PRECISION", "ZERO", "CKPT", "BATCH", memory, "PLACEMENT"]
    rows = [header]
    for stage, planned in plan.stages.items():
        rows.append([
            stage,
            str(planned.gpus),
            planned.precision,
            "-" if planned.zero_stage is None else str(planned.zero_stage),
            {None: "-", True: "yes", False: "no"}[planned.gradient_checkpointing],
            str(planned.batch_size),
            f"{planned.memory_gib:.1f} GiB",
            ", ".join(f"{role}->{device}" for role, device in planned.placement.items()),
        ])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [f"Plan for run '{name}' (preset {preset or 'none'}) on {where}", ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
