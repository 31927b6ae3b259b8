"""kmock's Kubernetes emulator, made close enough to an API server for kopf and the operator,
and a ``Cluster`` that plays the kubelet and the Job controller for handler tests.

kmock 0.8 stores objects as plain JSON. An API server also stamps uid, resourceVersion,
creationTimestamp and generation, filters lists by label selector, and answers a failed
JSON-patch ``test`` with 422; kopf depends on all of these.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import threading
import uuid
from typing import Any

import aiohttp
import attrs
import jsonpatch
import kmock
import kopf

from reasoning_operator.config import OperatorConfig
from reasoning_operator.handlers import build_registry

RUNS = kmock.resource("reasoning.dev", "v1alpha1", "reasoningtrainings")
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
NAMESPACED = {
    "reasoning.dev/v1alpha1/reasoningtrainings": ("ReasoningTraining", {"status"}),
    "batch/v1/jobs": ("Job", {"status"}),
    "v1/pods": ("Pod", {"status"}),
    "v1/configmaps": ("ConfigMap", set()),
    "v1/services": ("Service", set()),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", set()),
    "v1/events": ("Event", set()),
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, (kind, subresources) in NAMESPACED.items():
            self.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, subresources=subresources,
                                                     verbs=VERBS)
        # kopf waits for these to be discoverable, even when it watches cluster-wide.
        self.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS)
        self.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition", namespaced=False, verbs=VERBS)

    async def _handle(self, request):
        if request.resource is not None:
            self._stamp(request)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as error:
            return await self._render_error(_Unprocessable(message=str(error)))

    def _stamp(self, request) -> None:
        version = str(next(self._versions))
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if "generateName" in meta and not meta.get("name"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = version
            meta["generation"] = 1
        elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            if "spec" in request.data and request.subresource is None:
                key = (request.resource, request.namespace, request.name)
                current = self.objects[key] if key in self.objects else {}
                generation = current.get("metadata", {}).get("generation", 1)
                meta["generation"] = generation + 1
        elif request.action == kmock.action.UPDATE and isinstance(request.data, list):
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    async def _serve_list(self, request):
        listing = await super()._serve_list(request)
        selector = (request.params or {}).get("labelSelector")
        if selector:
            # "key=value" or "key" (the label exists), joined by commas
            wanted = [(part.split("=", 1) + [None])[:2] for part in selector.split(",")]
            listing["items"] = [item for item in listing["items"]
                                if all(_label_matches(item.get("metadata", {}).get("labels") or {}, key, value)
                                       for key, value in wanted)]
        return listing


def _label_matches(labels: dict[str, str], key: str, value: str | None) -> bool:
    return key in labels if value is None else labels.get(key) == value


@attrs.frozen
class _Unprocessable(kmock.KubernetesError):
    status: int = 422
    reason: str = "Invalid"
    message: str = "the JSON patch's test operation failed"


def _now(offset_seconds: float = 0) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """The test's hands on the emulated cluster: the user's kubectl, the kubelet, the Job controller."""

    def __init__(self, emulator: ApiServerEmulator, namespace: str = "default"):
        self.emulator = emulator
        self.namespace = namespace
        self.url = str(emulator.url).rstrip("/")

    # ---- the user

    async def apply(self, resource: dict[str, Any]) -> None:
        body = copy.deepcopy(resource)
        body["metadata"].setdefault("namespace", self.namespace)
        await self._call("POST", f"/apis/reasoning.dev/v1alpha1/namespaces/{self.namespace}/reasoningtrainings", body)

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        await self._call("PATCH", f"/apis/reasoning.dev/v1alpha1/namespaces/{self.namespace}/reasoningtrainings/{name}",
                         {"spec": spec}, "application/merge-patch+json")

    def run(self, name: str) -> dict[str, Any]:
        return self.emulator.objects[RUNS, self.namespace, name].raw

    def status(self, name: str) -> dict[str, Any]:
        return self.run(name).get("status") or {}

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        return {name: obj.raw for (resource, namespace, name), obj in self.emulator.objects.items()
                if resource.plural == plural and namespace == self.namespace and not obj.deleted}

    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.objects("jobs")

    def events(self) -> list[dict[str, Any]]:
        return list(self.objects("events").values())

    def job_creations(self, name: str) -> int:
        """POSTs that created the Job ``name`` (a second one would be a duplicate)."""
        return sum(1 for request in self.emulator._requests
                   if request.method == "POST" and request.resource == JOBS
                   and isinstance(request.data, dict) and request.data.get("metadata", {}).get("name") == name)

    # ---- the Job controller and the kubelet

    def start_pod(self, job_name: str, phase: str = "Running", index: int = 0, **status: Any) -> str:
        job = self.jobs()[job_name]
        name = f"{job_name}-{index}-{uuid.uuid4().hex[:5]}"
        template = job["spec"]["template"]
        self.emulator.objects[PODS, self.namespace, name] = pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "uid": str(uuid.uuid4()),
                         "creationTimestamp": _now(),
                         "labels": {**template["metadata"]["labels"],
                                    "batch.kubernetes.io/controller-uid": job["metadata"]["uid"]},
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                         "ownerReferences": [{"kind": "Job", "name": job_name, "uid": job["metadata"]["uid"]}]},
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": phase, **status},
        }
        self._publish(PODS, "ADDED", pod)
        self._job_status(job_name, {"startTime": job.get("status", {}).get("startTime") or _now(),
                                    "active": 1})
        return name

    def finish_pod(self, pod: str, exit_code: int, message: str, reason: str = "") -> None:
        terminated = {"exitCode": exit_code, "message": message,
                      "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        self.patch_object(PODS, pod, {"status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}})

    def complete_job(self, job_name: str) -> None:
        self._job_status(job_name, {"active": 0, "succeeded": 1, "completionTime": _now(), "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": _now()}]})

    def count_failure(self, job_name: str) -> None:
        failed = self.jobs()[job_name].get("status", {}).get("failed", 0) + 1
        self._job_status(job_name, {"failed": failed, "active": 0})

    def fail_job(self, job_name: str, reason: str = "BackoffLimitExceeded") -> None:
        self._job_status(job_name, {"active": 0, "conditions": [
            {"type": "Failed", "status": "True", "reason": reason, "message": "Job has reached the specified "
             "backoff limit", "lastTransitionTime": _now()}]})

    def _job_status(self, job_name: str, status: dict[str, Any]) -> None:
        self.patch_object(JOBS, job_name, {"status": status})

    # ---- any controller: changes made in the store, announced on the watch streams as the API server would

    def patch_object(self, resource, name: str, patch: dict[str, Any]) -> None:
        stored = self.emulator.objects[resource, self.namespace, name]
        stored.patch(patch)
        self._publish(resource, "MODIFIED", stored.raw)

    def delete_object(self, resource, name: str) -> None:
        stored = self.emulator.objects[resource, self.namespace, name]
        last = stored.raw
        stored.delete()
        self._publish(resource, "DELETED", last)

    def _publish(self, resource, type: str, raw: dict[str, Any]) -> None:
        event = {"type": type, "object": copy.deepcopy(raw)}
        asyncio.get_running_loop().create_task(self.emulator._buses[resource].put(event))

    async def _call(self, method: str, path: str, body: Any, content_type: str = "application/json") -> None:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, json=body,
                                       headers={"Content-Type": content_type}) as response:
                assert response.status < 400, await response.text()


def result_message(stage: str, accuracy: float | None = None) -> str:
    message = {"stage": stage, "phase": "Succeeded", "durationSeconds": 12.5,
               "checkpoint": f"/data/x/models/{stage}", "metrics": {"loss": 0.25}}
    if accuracy is not None:
        message["accuracy"] = accuracy
    return json.dumps(message)


class Operator:
    """kopf's operator in its own thread and event loop (as in a real process), pointed at the
    emulator; restartable. kopf cancels every task started after it on the loop it runs in, so it
    cannot share the test's loop."""

    def __init__(self, cluster: Cluster, metrics_port: int = 0):
        self.cluster = cluster
        self.metrics_port = metrics_port
        self.memo = None

    async def start(self) -> None:
        config = OperatorConfig(resync_seconds=0.2, stuck_after_seconds=1, metrics_port=self.metrics_port)
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        self.memo = kopf.Memo(connection=kopf.ConnectionInfo(server=self.cluster.url))
        self.stop_flag, ready = threading.Event(), threading.Event()
        operator = kopf.operator(registry=build_registry(config), settings=settings, clusterwide=True,
                                 standalone=True, stop_flag=self.stop_flag, ready_flag=ready, memo=self.memo)
        self.thread = threading.Thread(target=asyncio.run, args=(operator,), daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 20), "the operator did not start"

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "the operator did not stop"


async def finish_stage(cluster: Cluster, job: str, accuracy: float | None = None) -> None:
    pod = cluster.start_pod(job)
    cluster.finish_pod(pod, 0, result_message(job.rsplit("-", 1)[1], accuracy))
    cluster.complete_job(job)


async def eventually(check, timeout: float = 20.0, interval: float = 0.05):
    """Wait until ``check()`` returns a truthy value; return it. Until the deadline, an AssertionError,
    a KeyError or a TypeError (a field of an object not written yet: ``None["reason"]``) means "not yet"."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, TypeError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {check}")
        await asyncio.sleep(interval)
