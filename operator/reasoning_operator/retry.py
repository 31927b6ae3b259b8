"""``rto retry RUN``: rerun a run's failed stages, each from its last checkpoint.

It sets the run's ``reasoning.dev/retry`` annotation to a new value. The operator then deletes
each failed stage's Job and creates it again, from the current spec, writing to the same output
folder, where the stage's checkpoints are; ``status.stages.<stage>.retries`` counts the retries.
``kubectl annotate rt RUN reasoning.dev/retry=$(date +%s) --overwrite`` does the same.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from reasoning_trainer.schema import GROUP, PLURAL, VERSION

from . import connect
from .connect import CommandError, describe
from .desired import RETRY_ANNOTATION


def run(args: argparse.Namespace) -> None:
    cluster = connect.connect(args)
    status = cluster.run(args.run).get("status") or {}
    failed = [stage for stage, state in (status.get("stages") or {}).items() if state.get("phase") == "Failed"]
    if not failed:
        raise CommandError(f"{args.run} has no failed stage (phase {status.get('phase', 'Pending')}): nothing to retry")
    token = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, args.run,
                                                      {"metadata": {"annotations": {RETRY_ANNOTATION: token}}})
    except cluster.errors as error:
        raise CommandError(f"annotating {cluster.namespace}/{args.run}: {describe(error)}") from None
    folder = status.get("outputDir") or "the run's folder"
    print(f"{args.run}: retrying {', '.join(failed)}, from the last checkpoint in {folder}\n"
          f"follow it: rto status {args.run} -n {cluster.namespace} --watch")
