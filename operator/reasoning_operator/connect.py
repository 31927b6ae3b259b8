"""How ``rto``'s cluster commands reach the cluster: the kubeconfig, as kubectl reads it.

``--context`` picks a context, ``-n`` a namespace (else the context's, else ``default``); every
failure to connect or to find the run is a ``CommandError`` with a message, never a traceback.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from reasoning_trainer.schema import GROUP, PLURAL, VERSION


class CommandError(Exception):
    """What a cluster command prints (after ``rto <command>: ``) before exiting with status 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="the run's namespace (default: the kubeconfig context's)")
    parser.add_argument("--context", help="the kubeconfig context to use (default: the current one)")
    parser.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")


@dataclass
class Cluster:
    namespace: str
    custom: Any
    core: Any
    batch: Any

    def run(self, name: str) -> dict[str, Any]:
        """The ReasoningTraining ``name``, or a CommandError saying it is not there."""
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except self.errors as error:
            if error.status == 404:
                raise CommandError(f"no ReasoningTraining {name!r} in namespace {self.namespace!r} "
                                   f"(rto status -n {self.namespace} lists them)") from None
            raise CommandError(f"reading {self.namespace}/{name}: {describe(error)}") from None

    def runs(self) -> list[dict[str, Any]]:
        try:
            return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
        except self.errors as error:
            raise CommandError(f"listing runs in {self.namespace}: {describe(error)}") from None

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What the client raises for an API error or an API server it cannot reach."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        return ApiException, HTTPError


def connect(args: argparse.Namespace) -> Cluster:
    try:
        from kubernetes import client, config
    except ImportError:
        raise CommandError("needs the kubernetes client: pip install 'reasoning-operator[operator]'") from None
    try:
        api = config.new_client_from_config(config_file=args.kubeconfig, context=args.context)
        contexts, current = config.list_kube_config_contexts(config_file=args.kubeconfig)
    except (config.ConfigException, OSError) as error:
        raise CommandError(f"no cluster to talk to: {error}") from None
    context = next((item for item in contexts if item["name"] == args.context), current) if args.context \
        else current
    namespace = args.namespace or (context or {}).get("context", {}).get("namespace") or "default"
    return Cluster(namespace, client.CustomObjectsApi(api), client.CoreV1Api(api), client.BatchV1Api(api))


def describe(error: Exception) -> str:
    """An API error as one line: the API server's own message where it sent one."""
    import json

    status, reason, body = getattr(error, "status", None), getattr(error, "reason", ""), getattr(error, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = str(body)[:300] if body else None
    if status is None:  # no answer at all: the connection failed
        return f"cannot reach the API server ({error})"
    return f"{status} {reason}: {message}" if message else f"{status} {reason}"
