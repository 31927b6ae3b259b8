"""``rto operator``: run the operator (kopf) with the project's settings.

Arguments are declared without importing kopf, so ``rto --help`` works in the trainer image.
Replicas elect one leader on a coordination.k8s.io Lease (``leader.py``); the others wait and
take over within about ``lease_seconds`` when the leader stops renewing. kopf runs standalone
inside the leader: its own peering needs a CRD that is rarely installed, and without one it
silently pauses every watch.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from urllib.parse import urlparse

from .config import OperatorConfig

LEASE_NAME = "reasoning-operator"
# Exit status of a replica that lost its Lease: its pod restarts and queues up as a standby.
EXIT_LOST_LEADERSHIP = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeat for several)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--trainer-image", help="default trainer image of the stage Jobs ($RTO_TRAINER_IMAGE)")
    parser.add_argument("--metrics-port", type=int, help="operator metrics port, 0 to disable ($RTO_METRICS_PORT)")
    parser.add_argument("--liveness", metavar="URL", default="http://0.0.0.0:8081/healthz",
                        help="health endpoint, answered by leader and standby alike (default %(default)s)")
    parser.add_argument("--standalone", action="store_true",
                        help="no leader election: this replica is always active (only ever run one)")
    parser.add_argument("--lease-name", default=LEASE_NAME, help="the Lease replicas elect a leader on "
                                                                "(default %(default)s)")
    parser.add_argument("--lease-namespace", help="namespace of the Lease (default: $POD_NAMESPACE, else the "
                                                  "first --namespace, else default)")
    parser.add_argument("--identity", help="this replica's name in the Lease (default: $POD_NAME, else "
                                           "hostname and a random suffix)")
    parser.add_argument("--webhook-port", type=int, help="serve the validating admission webhook on this port")
    parser.add_argument("--webhook-addr", help="address the webhook listens on (default: every interface)")
    parser.add_argument("--webhook-host", help="the webhook's DNS name as the API server reaches it")
    parser.add_argument("--webhook-cert", help="TLS certificate file of the webhook (PEM)")
    parser.add_argument("--webhook-key", help="TLS private key file of the webhook (PEM)")
    parser.add_argument("--webhook-config", metavar="NAME",
                        help="create and keep the ValidatingWebhookConfiguration NAME pointing at this operator "
                             "(needs --webhook-host and RBAC on validatingwebhookconfigurations; "
                             "the Helm chart ships its own configuration instead)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every watch event it hands to a handler
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = OperatorConfig.from_env()
    overrides = {key: value for key, value in (("trainer_image", args.trainer_image),
                                               ("metrics_port", args.metrics_port)) if value is not None}
    return asyncio.run(serve(args, dataclasses.replace(config, **overrides)))


async def serve(args: argparse.Namespace, config: OperatorConfig) -> int:
    # kopf comes with the [operator] extra; the trainer image runs rto without it.
    import kopf

    from .handlers import build_registry
    from .kube import Kube
    from .leader import LeaderElection

    health = await _serve_health(args.liveness)
    settings = kopf.OperatorSettings()
    webhook = args.webhook_port is not None
    if webhook:
        settings.admission.server = kopf.WebhookServer(addr=args.webhook_addr, port=args.webhook_port,
                                                       host=args.webhook_host, certfile=args.webhook_cert,
                                                       pkeyfile=args.webhook_key)
        settings.admission.managed = args.webhook_config
    # The CRD is installed before the operator, so kopf need not list CRDs or namespaces
    # cluster-wide to find it; the RBAC stays within the watched namespaces.
    settings.scanning.disabled = True
    stop = asyncio.Event()
    election = holding = None
    if not args.standalone:
        connection = (kopf.login_with_service_account(settings=settings, logger=logging.getLogger("login"))
                      or kopf.login_via_client(settings=settings, logger=logging.getLogger("login")))
        election = LeaderElection(Kube(connection), _lease_namespace(args), args.lease_name, _identity(args))
        await election.acquire()
        holding = asyncio.create_task(election.hold(stop))
    try:
        await kopf.operator(registry=build_registry(config, webhook=webhook), settings=settings, standalone=True,
                            clusterwide=not args.namespace, namespaces=args.namespace, stop_flag=stop)
    finally:
        await health.cleanup()
        if election is not None:
            holding.cancel()
            if not stop.is_set():
                await election.release()
            await election.kube.close()
    if stop.is_set():
        logging.getLogger(__name__).error("stopped: this replica no longer holds the Lease")
        return EXIT_LOST_LEADERSHIP
    return 0


async def _serve_health(url: str):
    """``/healthz`` answers 200 while the process runs, as leader or standby, so a liveness
    probe never restarts a standby that is only waiting its turn."""
    from aiohttp import web

    parsed = urlparse(url)

    async def healthz(_request):
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get(parsed.path or "/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parsed.hostname or "0.0.0.0", 8081 if parsed.port is None else parsed.port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise SystemExit(f"rto operator: --liveness {url}: cannot listen on {host}:{port}: {error.strerror}")
    return runner


def _lease_namespace(args: argparse.Namespace) -> str:
    return args.lease_namespace or os.environ.get("POD_NAMESPACE") or (args.namespace or ["default"])[0]


def _identity(args: argparse.Namespace) -> str:
    return args.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
