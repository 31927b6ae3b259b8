"""``rto operator``: run the operator (kopf) with the project's settings.

Arguments are declared without importing kopf, so ``rto --help`` works in the trainer image.
One active replica at a time: kopf peering lets a standby replica wait and take over when
the active one stops renewing its peering record (docs/operations.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from .config import OperatorConfig

PEERING_NAME = "reasoning-operator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeat for several)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--trainer-image", help="default trainer image of the stage Jobs ($RTO_TRAINER_IMAGE)")
    parser.add_argument("--metrics-port", type=int, help="operator metrics port, 0 to disable ($RTO_METRICS_PORT)")
    parser.add_argument("--liveness", metavar="URL", default="http://0.0.0.0:8081/healthz",
                        help="liveness endpoint served by kopf (default %(default)s)")
    parser.add_argument("--peering", default=PEERING_NAME,
                        help="kopf peering name; replicas sharing it keep one active (default %(default)s)")
    parser.add_argument("--standalone", action="store_true", help="no peering: this replica is always active")
    parser.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    parser.add_argument("--webhook-port", type=int, help="serve the validating admission webhook on this port")
    parser.add_argument("--webhook-host", help="the webhook's DNS name as the API server reaches it")
    parser.add_argument("--webhook-cert", help="TLS certificate file of the webhook (PEM)")
    parser.add_argument("--webhook-key", help="TLS private key file of the webhook (PEM)")
    parser.add_argument("--webhook-config", metavar="NAME",
                        help="create and keep the ValidatingWebhookConfiguration NAME pointing at this operator "
                             "(needs --webhook-host and RBAC on validatingwebhookconfigurations; "
                             "the Helm chart ships its own configuration instead)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    # kopf comes with the [operator] extra; the trainer image runs rto without it.
    import kopf

    from .handlers import build_registry

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig.from_env()
    overrides = {key: value for key, value in (("trainer_image", args.trainer_image),
                                               ("metrics_port", args.metrics_port)) if value is not None}
    config = dataclasses.replace(config, **overrides)
    webhook = args.webhook_port is not None
    settings = kopf.OperatorSettings()
    if webhook:
        settings.admission.server = kopf.WebhookServer(port=args.webhook_port, host=args.webhook_host,
                                                       certfile=args.webhook_cert, pkeyfile=args.webhook_key)
        settings.admission.managed = args.webhook_config
    # The CRD is installed before the operator, so kopf need not list CRDs or namespaces
    # cluster-wide to find it; the RBAC stays within the watched namespaces.
    settings.scanning.disabled = True
    kopf.run(registry=build_registry(config, webhook=webhook), settings=settings,
             clusterwide=not args.namespace, namespaces=args.namespace,
             liveness_endpoint=args.liveness, peering_name=args.peering, standalone=args.standalone,
             priority=args.priority)
    return 0
