"""What the operator knows of the cluster between API calls, and which runs need a pass.

kopf's watches (one stream each for runs, their Jobs and their Pods) keep ``Cache`` current,
so a reconcile reads memory instead of listing Jobs and Pods per run: an idle run costs no
API request. Every event names the run it concerns and puts that run on the ``WorkQueue``,
which hands each run to one worker at a time and folds repeated events into one pass,
as controller-runtime's work queue does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

RunKey = tuple[str, str]  # (namespace, run name)


# Large and never read by the operator: kept out of the cache (at 500 runs, a tenth of its memory).
_UNREAD_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def _slim(body: dict[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    if "managedFields" not in meta and _UNREAD_ANNOTATION not in (meta.get("annotations") or {}):
        return body
    meta = {key: value for key, value in meta.items() if key != "managedFields"}
    if _UNREAD_ANNOTATION in (meta.get("annotations") or {}):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != _UNREAD_ANNOTATION}
    return {**body, "metadata": meta}


def _version(body: dict[str, Any]) -> int:
    try:
        return int(body["metadata"].get("resourceVersion") or 0)
    except ValueError:  # resourceVersions are opaque by contract; every API server we know uses integers
        return 0


@dataclass
class Cache:
    runs: dict[RunKey, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[RunKey, dict[str, dict[str, Any]]] = field(default_factory=dict)  # run -> Job name -> Job
    pods: dict[RunKey, dict[str, dict[str, Any]]] = field(default_factory=dict)  # run -> pod name -> Pod
    # The last state of Jobs deleted since the operator started: a Job removed by its TTL right after
    # finishing still tells how it finished.
    deleted_jobs: dict[RunKey, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def store_run(self, body: dict[str, Any], deleted: bool = False) -> None:
        body = _slim(body)
        key = run_key(body)
        if deleted:
            self.runs.pop(key, None)
            self.jobs.pop(key, None)
            self.pods.pop(key, None)
            self.deleted_jobs.pop(key, None)
        elif _version(body) >= _version(self.runs.get(key, body)):
            self.runs[key] = body

    def store_child(self, kind: str, key: RunKey, body: dict[str, Any], deleted: bool = False) -> None:
        body = _slim(body)
        table = self.jobs if kind == "Job" else self.pods
        children = table.setdefault(key, {})
        name = body["metadata"]["name"]
        if deleted:
            current = children.get(name)
            if current is not None and current["metadata"].get("uid") != body["metadata"].get("uid"):
                return  # the predecessor of the same name (a retried stage's failed Job) going away late
            gone = children.pop(name, None)
            if kind == "Job":
                self.deleted_jobs.setdefault(key, {})[name] = body if gone is None else _newest(gone, body)
        elif name not in children or _version(body) >= _version(children[name]):
            children[name] = body
            if kind == "Job":
                self.deleted_jobs.get(key, {}).pop(name, None)

    def children(self, kind: str, key: RunKey) -> list[dict[str, Any]]:
        return list(((self.jobs if kind == "Job" else self.pods).get(key) or {}).values())


def _newest(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return second if _version(second) >= _version(first) else first


def run_key(body: dict[str, Any]) -> RunKey:
    meta = body["metadata"]
    return meta["namespace"], meta["name"]


class WorkQueue:
    """Runs waiting for a pass. A run queued while waiting is queued once; a run queued while a
    worker reconciles it waits until that pass ends, so no two workers reconcile one run."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[RunKey] = asyncio.Queue()
        self._waiting: set[RunKey] = set()
        self._active: set[RunKey] = set()
        self._again: set[RunKey] = set()
        self._polled: set[RunKey] = set()

    def add(self, key: RunKey) -> None:
        if key in self._active:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_all(self, keys: Iterable[RunKey]) -> None:
        for key in keys:
            self.add(key)

    def add_later(self, key: RunKey, seconds: float) -> None:
        asyncio.get_running_loop().call_later(seconds, self.add, key)

    def poll(self, key: RunKey, seconds: float) -> None:
        """Queue ``key`` in ``seconds`` unless a poll of it is already pending: for state no watch
        delivers, read once per period however many events the run gets meanwhile."""
        if key not in self._polled:
            self._polled.add(key)
            asyncio.get_running_loop().call_later(seconds, self._poll_due, key)

    def _poll_due(self, key: RunKey) -> None:
        self._polled.discard(key)
        self.add(key)

    async def get(self) -> RunKey:
        key = await self._queue.get()
        self._waiting.discard(key)
        self._active.add(key)
        return key

    def done(self, key: RunKey) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._waiting)
