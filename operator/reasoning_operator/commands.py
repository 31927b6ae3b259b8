"""``rto``'s commands for runs on a cluster, kubectl-style: submit, status, logs, results, delete.

They read what the operator writes into each run's status (phases, attempts, results) and the
stage pods' logs, through the kubeconfig. Each prints what a user acts on next; every failure is
one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from reasoning_trainer.schema import GROUP, KIND, PLURAL, VERSION
from reasoning_trainer.schema.errors import RunValidationError
from reasoning_trainer.schema.run import STAGE_ORDER
from reasoning_trainer.schema.validate import load_run_document, validate_resource

from . import connect, retry
from .admission import Rejected, admit
from .connect import Cluster, CommandError, describe
from .desired import CONTAINER, RESTRICTED_CONTAINER, RUN_LABEL, STAGE_LABEL, TRAINER_GID, TRAINER_UID, Run

FINISHED = ("Succeeded", "Failed")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def add_commands(commands: argparse._SubParsersAction) -> None:
    submit = _command(commands, "submit", submit_run, "create a run on the cluster from a manifest, after the "
                                                       "checks the operator makes")
    submit.add_argument("-f", "--filename", required=True, help="the ReasoningTraining manifest")
    submit.add_argument("-w", "--watch", action="store_true", help="then follow it until it finishes "
                                                                   "(exit 1 if it fails)")
    status = _command(commands, "status", show_status, "list the runs, or show one run's stages and conditions")
    status.add_argument("run", metavar="RUN", nargs="?", help="a run's name (default: list every run)")
    status.add_argument("-w", "--watch", action="store_true", help="print each change until the run finishes")
    logs = _command(commands, "logs", show_logs, "print a stage pod's log (rank 0 of a multi-node stage)")
    logs.add_argument("run", metavar="RUN")
    logs.add_argument("--stage", choices=STAGE_ORDER, help="default: the stage now running, else the last one")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    results = _command(commands, "results", show_results, "print a run's results: accuracy, duration, "
                                                          "checkpoint and metrics per stage")
    results.add_argument("run", metavar="RUN")
    results.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    report = _command(commands, "report", write_cluster_report, "write a run's report.html from the results on "
                                                                "its volume (read by a short pod)")
    report.add_argument("run", metavar="RUN")
    report.add_argument("--output", metavar="FILE", help="where to write it (default: ./<run>-report.html)")
    report.add_argument("--image", help="image of the reader pod (default: the run's trainer image)")
    report.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                        help="longest wait for the reader pod (default: 300)")
    retry_parser = _command(commands, "retry", retry.run, "rerun a run's failed stages, each from its last "
                                                          "checkpoint")
    retry_parser.add_argument("run", metavar="RUN")
    delete = _command(commands, "delete", delete_run, "delete a run and its Jobs; its claim is kept unless "
                                                      "storage.whenDeleted is Delete")
    delete.add_argument("run", metavar="RUN")


def _command(commands: argparse._SubParsersAction, name: str, handler: Callable[..., None],
             help: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help)
    connect.add_arguments(parser)
    parser.set_defaults(handler=lambda args: _handle(name, handler, args))
    return parser


def _handle(name: str, handler: Callable[..., int | None], args: argparse.Namespace) -> int:
    try:
        return handler(args) or 0
    except CommandError as error:
        print(f"rto {name}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def submit_run(args: argparse.Namespace) -> int:
    try:
        document = load_run_document(args.filename)
        validate_resource(document)  # a file that holds no run at all is named before admission's checks
        admit(document)
    except RunValidationError as error:
        raise CommandError(_issues(error.issues)) from None
    except Rejected as rejected:
        raise CommandError(_issues(rejected.issues)) from None
    cluster = connect.connect(args)
    namespace = args.namespace or document["metadata"].get("namespace") or cluster.namespace
    cluster.namespace = namespace
    name = document["metadata"]["name"]
    body = {**document, "metadata": {**document["metadata"], "namespace": namespace}}
    try:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except cluster.errors as error:
        if getattr(error, "status", None) == 409:
            phase = (cluster.run(name).get("status") or {}).get("phase", "Pending")
            raise CommandError(f"{namespace}/{name} already exists ({phase}): rto status {name} -n {namespace} "
                               f"shows it; rto delete it first, or give the new run another metadata.name") \
                from None
        if getattr(error, "status", None) == 404:
            raise CommandError(f"this cluster does not serve {KIND} (or has no namespace {namespace!r}): install "
                               f"the operator (helm install, or kubectl apply -f manifests/install.yaml)") from None
        raise CommandError(f"creating {namespace}/{name}: {describe(error)}") from None
    print(f"reasoningtraining/{name} created in {namespace}")
    if not args.watch:
        print(f"follow it: rto status {name} -n {namespace} --watch")
        return 0
    return _watch(cluster, name)


def _issues(issues: list[Any]) -> str:
    return "invalid:\n" + "\n".join(f"  {issue}" for issue in issues)


def show_status(args: argparse.Namespace) -> int:
    cluster = connect.connect(args)
    if args.run is None:
        print(_runs_table(cluster.runs(), datetime.now(timezone.utc)))
        return 0
    if args.watch:
        return _watch(cluster, args.run)
    print(_run_details(cluster.run(args.run)))
    return 0


def _watch(cluster: Cluster, name: str, interval: float = 2.0) -> int:
    """One line per change of the run's phase, stage or a stage's message, until it finishes."""
    seen: list[str] = []
    while True:
        status = cluster.run(name).get("status") or {}
        for line in _changes(status):
            if line not in seen:
                seen.append(line)
                print(line, flush=True)
        if status.get("phase") in FINISHED:
            return 0 if status["phase"] == "Succeeded" else 1
        time.sleep(interval)


def _changes(status: dict[str, Any]) -> list[str]:
    lines = []
    for stage, state in _ordered(status.get("stages") or {}):
        if not state.get("message") and state.get("phase", "Pending") == "Pending":
            continue  # a stage not reached yet
        accuracy = f", accuracy {_percent(state.get('accuracy'))}" if state.get("accuracy") is not None else ""
        lines.append(f"{stage}: {state.get('phase', 'Pending')}: {state.get('message') or '-'}{accuracy}")
    phase = status.get("phase")
    if phase in FINISHED:
        lines.append(f"run {phase}" + (f", accuracy {status['accuracy']}" if status.get("accuracy") else ""))
    return lines


def _runs_table(runs: list[dict[str, Any]], now: datetime) -> str:
    if not runs:
        return "no runs in this namespace (rto submit -f run.yaml creates one)"
    rows = [("NAME", "PHASE", "STAGE", "STAGES", "ACCURACY", "AGE")]
    for body in sorted(runs, key=lambda item: item["metadata"]["name"]):
        status = body.get("status") or {}
        stages = status.get("stages") or {}
        done = sum(1 for state in stages.values() if state.get("phase") == "Succeeded")
        enabled = _enabled_count(body) or len(stages)
        rows.append((body["metadata"]["name"], status.get("phase", "Pending"), status.get("stage") or "-",
                     f"{done}/{enabled}", status.get("accuracy") or "-",
                     _age(body["metadata"].get("creationTimestamp"), now)))
    return _table(rows)


def _enabled_count(body: dict[str, Any]) -> int | None:
    from reasoning_trainer.schema import validate_spec

    try:
        return len(validate_spec(body.get("spec") or {}).enabled_stages())
    except RunValidationError:
        return None


def _run_details(body: dict[str, Any]) -> str:
    meta, status = body["metadata"], body.get("status") or {}
    phase = status.get("phase", "Pending")
    lines = [f"{meta['name']} ({meta['namespace']}): {phase}"
             + (f", stage {status['stage']}" if status.get("stage") else "")
             + (f", accuracy {status['accuracy']}" if status.get("accuracy") else "")]
    for condition in status.get("conditions") or []:
        lines.append(f"  {condition['type']}: {condition['status']} ({condition.get('reason', '')}) "
                     f"{condition.get('message', '')}".rstrip())
    if status.get("outputDir"):
        lines.append(f"  outputs: {status['outputDir']} on the run's volume")
    rows = [("STAGE", "PHASE", "GPUS", "ATTEMPTS", "DURATION", "ACCURACY", "MESSAGE")]
    for stage, state in _ordered(status.get("stages") or {}):
        rows.append((stage, state.get("phase", "Pending"), str(state.get("gpus") if state.get("gpus") is not None
                                                               else "-"),
                     str(state.get("attempts", 0)), _duration(state.get("durationSeconds")),
                     _percent(state.get("accuracy")), state.get("message") or "-"))
    if len(rows) > 1:
        lines += ["", _table(rows)]
    else:
        lines.append("  no stage started yet: is the operator running? (kubectl get pods -n reasoning-operator)")
    return "\n".join(lines)


def show_results(args: argparse.Namespace) -> int:
    cluster = connect.connect(args)
    body = cluster.run(args.run)
    status = body.get("status") or {}
    results = {"run": args.run, "namespace": cluster.namespace, "phase": status.get("phase", "Pending"),
               "accuracy": status.get("accuracy"), "outputDir": status.get("outputDir"),
               "stages": {stage: {key: state[key] for key in ("phase", "durationSeconds", "accuracy", "checkpoint",
                                                               "metrics") if state.get(key) not in (None, {})}
                          for stage, state in _ordered(status.get("stages") or {})}}
    if args.output == "json":
        print(json.dumps(results, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(results, sort_keys=False), end="")
    else:
        print(_results_table(results))
    return 0


def _results_table(results: dict[str, Any]) -> str:
    rows = [("STAGE", "PHASE", "DURATION", "ACCURACY", "CHECKPOINT")]
    metric_lines = []
    for stage, result in results["stages"].items():
        rows.append((stage, result["phase"], _duration(result.get("durationSeconds")),
                     _percent(result.get("accuracy")), result.get("checkpoint") or "-"))
        if result.get("metrics"):
            metric_lines.append(f"  {stage}: " + ", ".join(f"{key} {_number(value)}"
                                                          for key, value in sorted(result["metrics"].items())))
    head = f"{results['run']} ({results['namespace']}): {results['phase']}" + \
        (f", accuracy {results['accuracy']}" if results.get("accuracy") else "")
    parts = [head, _table(rows)] if len(rows) > 1 else [head, "no stage has finished yet"]
    if metric_lines:
        parts += ["metrics:", *metric_lines]
    if results.get("outputDir"):
        parts.append(f"outputs: {results['outputDir']} on the run's volume")
    return "\n".join(parts)


def show_logs(args: argparse.Namespace) -> int:
    cluster = connect.connect(args)
    body = cluster.run(args.run)
    status = body.get("status") or {}
    stages = status.get("stages") or {}
    stage = args.stage or status.get("stage") or next((name for name, _ in reversed(_ordered(stages))), None)
    if stage is None:
        raise CommandError(f"{args.run} has no stage yet (phase {status.get('phase', 'Pending')})")
    try:
        pods = cluster.core.list_namespaced_pod(
            cluster.namespace, label_selector=f"{RUN_LABEL}={args.run},{STAGE_LABEL}={stage}").items
    except cluster.errors as error:
        raise CommandError(f"listing the pods of stage {stage}: {describe(error)}") from None
    if not pods:
        state = stages.get(stage) or {}
        raise CommandError(f"stage {stage} has no pod ({state.get('phase', 'not started')}"
                           f"{': ' + state['message'] if state.get('message') else ''})")
    pod = _speaking_pod(pods)
    print(f"==> pod {pod.metadata.name} (stage {stage}) <==", file=sys.stderr, flush=True)
    try:
        response = cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.namespace, container=CONTAINER,
                                                        follow=args.follow, tail_lines=args.tail,
                                                        _preload_content=False)
        for line in _lines(response.stream(4096)):
            print(as_text(line), flush=True)
    except cluster.errors as error:
        raise CommandError(f"reading the log of pod {pod.metadata.name}: {describe(error)}") from None
    return 0


def _lines(chunks) -> Any:
    pending = ""
    for chunk in chunks:
        pending += chunk.decode("utf-8", errors="replace")
        *complete, pending = pending.split("\n")
        yield from complete
    if pending:
        yield pending


def as_text(line: str) -> str:
    """A stage's JSON log line as the text a local run prints; any other line as it is."""
    if not line.startswith("{"):
        return line
    try:
        entry = json.loads(line)
        text = f"{entry['time'][11:19]} {entry['level']} {entry['logger']}: {entry['message']}"
    except (ValueError, KeyError, TypeError):
        return line
    return text + (f"\n{entry['exception']}" if entry.get("exception") else "")


def _speaking_pod(pods: list[Any]) -> Any:
    """Rank 0 (which writes the stage's results), newest attempt first."""
    def rank(pod: Any) -> tuple[bool, datetime]:
        index = (pod.metadata.annotations or {}).get(COMPLETION_INDEX, "0")
        return index == "0", pod.metadata.creation_timestamp or datetime.min.replace(tzinfo=timezone.utc)
    return max(pods, key=rank)


# Run by the reader pod: every stage's results.json under the run's folder, as one JSON object.
READ_RESULTS = """import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
found = {stage: json.loads((root / stage / "results.json").read_text())
         for stage in ("select", "sft", "rl", "eval") if (root / stage / "results.json").is_file()}
print(json.dumps(found))
"""


def write_cluster_report(args: argparse.Namespace) -> int:
    """The report a local run writes, for a run on the cluster: a pod mounts the run's claim
    read-only and prints its stages' results, and the report is drawn here."""
    cluster = connect.connect(args)
    body = cluster.run(args.run)
    status = body.get("status") or {}
    if not status.get("outputDir"):
        raise CommandError(f"{args.run} has not started (phase {status.get('phase', 'Pending')}): no results yet")
    pod = reader_pod(body, args.image or _trainer_image(cluster, body))
    name = pod["metadata"]["name"]
    try:
        cluster.core.create_namespaced_pod(cluster.namespace, pod)
    except cluster.errors as error:
        raise CommandError(f"creating the reader pod: {describe(error)}") from None
    try:
        print(f"reading {status['outputDir']} through pod {name} ...", file=sys.stderr, flush=True)
        _wait_for_pod(cluster, name, args.timeout)
        try:
            printed = cluster.core.read_namespaced_pod_log(name, cluster.namespace, container="reader")
        except cluster.errors as error:
            raise CommandError(f"reading the log of the reader pod {name}: {describe(error)}") from None
    finally:
        try:
            cluster.core.delete_namespaced_pod(name, cluster.namespace, grace_period_seconds=0)
        except cluster.errors:
            pass  # it has an owner: the run; it goes with the run at the latest
    try:
        results = json.loads(printed)
    except ValueError:
        raise CommandError(f"the reader pod printed no results: {printed[-300:]!r}") from None
    if not results:
        raise CommandError(f"no stage of {args.run} has finished results in {status['outputDir']}")
    try:
        from reasoning_trainer.report import write_report
    except ImportError:
        raise CommandError("drawing the report needs matplotlib: pip install 'reasoning-operator[train]'") from None
    target = write_report(args.run, results, Path(args.output or f"{args.run}-report.html"))
    print(f"report: {target} (stages {', '.join(results)})")
    return 0


def reader_pod(body: dict[str, Any], image: str) -> dict[str, Any]:
    run = Run.from_body(body)
    storage = (body.get("spec") or {}).get("storage") or {}
    claim = storage.get("existingClaim") or f"{run.name}-data"
    metadata = run.metadata(f"{run.name}-report-{secrets.token_hex(3)}")
    metadata["labels"][f"{GROUP}/role"] = "report-reader"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "activeDeadlineSeconds": 600,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_GID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "reader", "image": image, "command": ["python", "-c", READ_RESULTS],
                        "args": [(body.get("status") or {})["outputDir"]],
                        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                        "securityContext": dict(RESTRICTED_CONTAINER)}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]}}


def _trainer_image(cluster: Cluster, body: dict[str, Any]) -> str:
    """The image the run's stages ran with: its spec's, else a stage Job's (the operator's default)."""
    image = (body.get("spec") or {}).get("image")
    if image:
        return image
    try:
        jobs = cluster.batch.list_namespaced_job(cluster.namespace,
                                                 label_selector=f"{RUN_LABEL}={body['metadata']['name']}").items
    except cluster.errors as error:
        raise CommandError(f"listing the run's Jobs for their image: {describe(error)}") from None
    if jobs:
        return jobs[0].spec.template.spec.containers[0].image
    raise CommandError("the run's Jobs are gone, so their image is unknown: pass --image <the trainer image>")


def _wait_for_pod(cluster: Cluster, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pod = cluster.core.read_namespaced_pod(name, cluster.namespace)
        except cluster.errors as error:
            raise CommandError(f"reading the reader pod {name}: {describe(error)}") from None
        phase = pod.status.phase
        if phase == "Succeeded":
            return
        if phase == "Failed":
            raise CommandError(f"the reader pod {name} failed: {pod.status.message or pod.status.reason or ''}")
        if time.monotonic() > deadline:
            waiting = [condition.message for condition in pod.status.conditions or [] if condition.message]
            raise CommandError(f"the reader pod {name} did not finish within {timeout:.0f} s (phase {phase}"
                               f"{': ' + waiting[0] if waiting else ''}); kubectl describe pod {name} says why")
        time.sleep(1)


def delete_run(args: argparse.Namespace) -> int:
    cluster = connect.connect(args)
    body = cluster.run(args.run)
    storage = (body.get("spec") or {}).get("storage") or {}
    try:
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, args.run)
    except cluster.errors as error:
        raise CommandError(f"deleting {cluster.namespace}/{args.run}: {describe(error)}") from None
    print(f"reasoningtraining/{args.run} deleted from {cluster.namespace}; its Jobs, pods and plans go with it")
    if storage.get("existingClaim"):
        print(f"the claim {storage['existingClaim']} (existingClaim) is untouched")
    elif storage.get("whenDeleted") == "Delete":
        print(f"the claim {args.run}-data goes too (storage.whenDeleted: Delete)")
    else:
        print(f"kept: the claim {args.run}-data with every checkpoint and trained model (storage.whenDeleted: "
              f"Retain); remove it with kubectl delete pvc {args.run}-data -n {cluster.namespace}")
    return 0


def _ordered(stages: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(stages.items(), key=lambda item: STAGE_ORDER.index(item[0]) if item[0] in STAGE_ORDER else 99)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    return _duration((now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
