"""``rto retry RUN``: rerun a run's failed stages, each from its last checkpoint.

It sets the run's ``reasoning.dev/retry`` annotation to a new value. The operator then deletes
each failed stage's Job and creates it again, from the current spec, writing to the same output
folder, where the stage's checkpoints are; ``status.stages.<stage>.retries`` counts the retries.
``kubectl annotate rt RUN reasoning.dev/retry=$(date +%s) --overwrite`` does the same.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from reasoning_trainer.schema import GROUP, PLURAL, VERSION

from .desired import RETRY_ANNOTATION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the ReasoningTraining's name")
    parser.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
    parser.add_argument("--context", help="the kubeconfig context to use (default: the current one)")


def run(args: argparse.Namespace) -> int:
    try:
        from kubernetes import client, config
    except ImportError:
        return _fail("needs the kubernetes client: pip install 'reasoning-operator[operator]' "
                     f"(or: kubectl annotate rt {args.run} {RETRY_ANNOTATION}=$(date +%s) --overwrite)")
    try:
        config.load_kube_config(context=args.context)
        contexts, current = config.list_kube_config_contexts()
    except (config.ConfigException, OSError) as error:
        return _fail(f"no cluster to talk to: {error}")
    context = next((item for item in contexts if item["name"] == args.context), current) if args.context else current
    namespace = args.namespace or context["context"].get("namespace") or "default"
    api = client.CustomObjectsApi()
    try:
        body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.run)
    except client.ApiException as error:
        if error.status == 404:
            return _fail(f"no ReasoningTraining {args.run!r} in namespace {namespace!r}")
        return _fail(f"reading {namespace}/{args.run}: {error.status} {error.reason}")
    status = body.get("status") or {}
    failed = [stage for stage, state in (status.get("stages") or {}).items() if state.get("phase") == "Failed"]
    if not failed:
        return _fail(f"{args.run} has no failed stage (phase {status.get('phase', 'Pending')}): nothing to retry")
    token = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.run,
                                           {"metadata": {"annotations": {RETRY_ANNOTATION: token}}})
    except client.ApiException as error:
        return _fail(f"annotating {namespace}/{args.run}: {error.status} {error.reason}")
    folder = status.get("outputDir") or "the run's folder"
    print(f"{args.run}: retrying {', '.join(failed)}, from the last checkpoint in {folder}\n"
          f"follow it: kubectl get rt {args.run} -n {namespace} -w")
    return 0


def _fail(message: str) -> int:
    print(f"rto retry: {message}", file=sys.stderr)
    return 1
