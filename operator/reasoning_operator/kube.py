"""A small async Kubernetes client for the run's children: plain dicts in and out.

It logs in with the same credentials kopf uses (kopf's login helpers: in-cluster service
account or kubeconfig), and retries throttling (429), server errors (5xx) and dropped
connections with backoff, honouring Retry-After. "Already exists" on create and "not found"
on delete are answers, not errors: that is what makes every reconcile idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp
import kopf

log = logging.getLogger(__name__)

RETRIED_STATUSES = {429, 500, 502, 503, 504}
BACKOFF_SECONDS = (0.2, 0.5, 1, 2, 4, 8)

# kind -> (API prefix, plural) of the resources the operator (and its e2e test) touches.
RESOURCES = {
    "Namespace": ("/api/v1", "namespaces"),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "ReasoningTraining": ("/apis/reasoning.dev/v1alpha1", "reasoningtrainings"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Event": ("/api/v1", "events"),
    "PodGroup": ("/apis/scheduling.volcano.sh/v1beta1", "podgroups"),
    "JobSet": ("/apis/jobset.x-k8s.io/v1alpha2", "jobsets"),
}
EVENT_SOURCE = "reasoning-operator"
STATUS_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists", 422: "Invalid"}


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: Any):
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        # A path nothing serves answers in plain text: name the reason by the status then.
        self.reason = (body.get("reason", "") if isinstance(body, dict) else "") or STATUS_REASONS.get(status, "")
        self.message = message.strip()


def path_of(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    """The REST path; ``namespace`` None for cluster-scoped kinds."""
    prefix, plural = RESOURCES[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    def __init__(self, connection: kopf.ConnectionInfo, relogin: Callable[[], kopf.ConnectionInfo] | None = None,
                 counter=None):
        self._connection = connection
        self._relogin = relogin
        self._session: aiohttp.ClientSession | None = None
        self._counter = counter  # a Counter labelled verb, resource, code: every answer is counted

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path_of(kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None, selector: dict[str, str | None],
                   fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects matching ``selector`` (a None value: the label exists) and the field selector
        ``fields``; every namespace when ``namespace`` is None."""
        query = {"labelSelector": ",".join(key if value is None else f"{key}={value}"
                                           for key, value in selector.items())}
        if fields:
            query["fieldSelector"] = ",".join(f"{key}={value}" for key, value in fields.items())
        return (await self.request("GET", path_of(kind, namespace), params=query)).get("items", [])

    async def create(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The object as created now, or None when it already existed."""
        meta = body["metadata"]
        try:
            return await self.request("POST", path_of(body["kind"], meta.get("namespace")), json=body)
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT: refused with 409 when ``metadata.resourceVersion`` is not the stored one."""
        meta = body["metadata"]
        return await self.request("PUT", path_of(body["kind"], meta.get("namespace"), meta["name"]), json=body)

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        """A merge patch of the status; with ``resource_version``, refused (409) when the object
        changed since it was read, so a pass that worked from a stale copy writes nothing."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request("PATCH", path_of(kind, namespace, name, "status"), json=body,
                                  content_type="application/merge-patch+json")

    async def post_event(self, about: dict[str, Any], type: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``about``, as ``kubectl describe`` and ``kubectl events`` show them."""
        meta = about["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.create({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": about["apiVersion"], "kind": about["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type, "reason": reason, "message": message[:1024],
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE, "action": reason,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1})

    async def patch(self, kind: str, namespace: str, name: str, patch: list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902) of the object."""
        return await self.request("PATCH", path_of(kind, namespace, name), json=patch,
                                  content_type="application/json-patch+json")

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        """Foreground: the Job stays (being deleted) until its pods have stopped, so a successor of the
        same name never runs beside a pod still saving a checkpoint."""
        try:
            await self.request("DELETE", path_of(kind, namespace, name),
                                json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"})
        except ApiError as error:
            if error.status != 404:
                raise

    async def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                       content_type: str = "application/json") -> dict[str, Any]:
        relogged = False
        for pause in (*BACKOFF_SECONDS, None):
            try:
                session = self._open()
                async with session.request(method, self._connection.server.rstrip("/") + path, params=params,
                                           json=json, headers={"Content-Type": content_type}) as response:
                    body = await _body(response)
                    if self._counter is not None:
                        self._counter.labels(method, _resource(path), str(response.status)).inc()
                    if response.status < 400:
                        return body
                    if response.status == 401 and self._relogin is not None and not relogged:
                        relogged = True
                        await self._login_again()
                        continue
                    if response.status not in RETRIED_STATUSES or pause is None:
                        raise ApiError(response.status, method, path, body)
                    pause = _retry_after(response, pause)
                    log.warning("%s %s: HTTP %s, retrying in %.1f s", method, path, response.status, pause)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
                if pause is None:
                    raise
                log.warning("%s %s: %s, retrying in %.1f s", method, path, error, pause)
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last attempt raises")

    async def _login_again(self) -> None:
        await self.close()
        self._connection = await asyncio.to_thread(self._relogin)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connection = self._connection
            headers = {"Accept": "application/json", "User-Agent": "reasoning-operator"}
            auth = None
            if connection.token:
                headers["Authorization"] = f"{connection.scheme or 'Bearer'} {connection.token}"
            elif connection.username and connection.password:
                auth = aiohttp.BasicAuth(connection.username, connection.password)
            self._session = aiohttp.ClientSession(
                headers=headers, auth=auth, connector=aiohttp.TCPConnector(ssl=_ssl_context(connection), limit=20),
                timeout=aiohttp.ClientTimeout(total=60))
        return self._session


def _resource(path: str) -> str:
    """The resource a REST path names: .../namespaces/NS/jobs/NAME/status -> jobs/status."""
    parts = path.split("?")[0].strip("/").split("/")
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts[0] == "api" else parts[3:]
    return parts[0] + (f"/{parts[2]}" if len(parts) > 2 else "") if parts else "/"


async def _body(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if not text:
        return {}
    try:
        return await response.json(content_type=None)
    except ValueError:
        return text


def _retry_after(response: aiohttp.ClientResponse, default: float) -> float:
    try:
        return max(default, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default


def _ssl_context(connection: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not connection.server.startswith("https"):
        return False
    if connection.insecure:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=connection.ca_path, cadata=_text(connection.ca_data))
    if connection.certificate_path or connection.certificate_data:
        context.load_cert_chain(_file(connection.certificate_path, connection.certificate_data),
                                _file(connection.private_key_path, connection.private_key_data))
    return context


def _text(data: str | bytes | None) -> str | None:
    if data is None:
        return None
    raw = data if isinstance(data, bytes) else data.encode()
    if b"-----BEGIN" not in raw:
        raw = base64.b64decode(raw)
    return raw.decode()


def _file(path: Any, data: str | bytes | None) -> str | None:
    """ssl only loads client certificates from files; kubeconfig may inline them."""
    if path or data is None:
        return path
    handle = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)
    with handle:
        handle.write(_text(data))
    return handle.name


class Discovery:
    """Whether the cluster serves a resource (``apiVersion``, plural); asked again at most every
    ``ttl`` seconds, so an API installed while the operator runs is used from then on."""

    def __init__(self, kube: Kube, api_version: str, plural: str, ttl: float = 60.0):
        self._kube = kube
        self._path = f"/apis/{api_version}"
        self._plural = plural
        self._ttl = ttl
        self._served = False
        self._checked = float("-inf")

    async def served(self) -> bool:
        if time.monotonic() - self._checked < self._ttl:
            return self._served
        try:
            resources = (await self._kube.request("GET", self._path)).get("resources") or []
        except ApiError as error:
            if error.status != 404:
                raise
            resources = []
        self._served = any(resource.get("name") == self._plural for resource in resources)
        self._checked = time.monotonic()
        return self._served
