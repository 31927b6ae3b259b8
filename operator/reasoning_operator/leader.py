"""One active replica: leader election on a coordination.k8s.io Lease, as client-go's does it.

Every replica tries to take the Lease; the holder renews it every ``renew_seconds``. A standby
takes it over once the holder has not renewed it for ``lease_seconds``, judged by the standby's
own clock from the moment it last saw the record change (clocks of two nodes never need to agree).
A leader that cannot renew before ``renew_deadline`` stops reconciling and exits, so two replicas
never act on the same run. Leases exist on every Kubernetes cluster: no CRD to install first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .kube import ApiError, Kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: int = 15
    renew_deadline: float = 10.0
    renew_seconds: float = 2.0  # also how often a standby looks at the Lease


class LeaderElection:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, timing: LeaseTiming = LeaseTiming()):
        self.kube, self.namespace, self.name, self.identity, self.timing = kube, namespace, name, identity, timing
        self._seen: tuple[Any, ...] | None = None  # the record as last read
        self._seen_at = 0.0  # our monotonic clock when that record last changed
        self._held: dict[str, Any] | None = None  # the Lease as this replica last wrote it

    async def acquire(self) -> None:
        """Returns once this replica holds the Lease."""
        announced = False
        while not await self._try():
            if not announced:
                log.info("standby: Lease %s/%s is held by %s; waiting to take over", self.namespace, self.name,
                         self._seen[0] if self._seen else "?")
                announced = True
            await asyncio.sleep(self.timing.renew_seconds)
        log.info("leading: this replica (%s) holds Lease %s/%s", self.identity, self.namespace, self.name)

    async def hold(self, lost: asyncio.Event) -> None:
        """Renews the Lease until cancelled; sets ``lost`` if it cannot renew in time."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.timing.renew_seconds)
            try:
                if await self._try():
                    renewed = time.monotonic()
                    continue
                log.error("leadership lost: Lease %s/%s is now held by %s", self.namespace, self.name,
                          self._seen[0] if self._seen else "?")
            except Exception as error:  # any failure to renew counts against the deadline
                log.warning("could not renew Lease %s/%s: %s", self.namespace, self.name, error)
                if time.monotonic() - renewed < self.timing.renew_deadline:
                    continue
                log.error("leadership lost: Lease not renewed for %.0f s", time.monotonic() - renewed)
            lost.set()
            return

    async def release(self) -> None:
        """On a clean shutdown: hand the Lease over at once instead of after it expires."""
        lease = await self.kube.get("Lease", self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=_now())
        try:
            await self.kube.replace(lease)
        except ApiError as error:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, error)

    async def _try(self) -> bool:
        """Take or renew the Lease if it is ours, free, or expired; False if another replica holds it.
        A holder renews with one PUT of the copy it last wrote; only a conflict makes it read."""
        if self._held is not None:
            self._held["spec"]["renewTime"] = _now()
            if await self._write(self._held):
                return True
        lease = await self.kube.get("Lease", self.namespace, self.name)
        now = _now()
        if lease is None:
            return await self._write({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                      "metadata": {"name": self.name, "namespace": self.namespace},
                                      "spec": self._spec(now, now, 0)}, create=True)
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        holder = spec.get("holderIdentity")
        if holder == self.identity:
            lease["spec"] = {**spec, **self._spec(spec.get("acquireTime") or now, now,
                                                  spec.get("leaseTransitions") or 0)}
            return await self._write(lease)
        duration = spec.get("leaseDurationSeconds") or self.timing.lease_seconds
        if holder and time.monotonic() - self._seen_at < duration:
            return False
        lease["spec"] = self._spec(now, now, (spec.get("leaseTransitions") or 0) + 1)
        return await self._write(lease)

    async def _write(self, lease: dict[str, Any], create: bool = False) -> bool:
        self._held = None
        try:
            written = await self.kube.create(lease) if create else await self.kube.replace(lease)
        except ApiError as error:
            if error.status == 409:  # another replica wrote first
                return False
            raise
        self._held = written
        return written is not None

    def _spec(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.timing.lease_seconds,
                "acquireTime": acquired, "renewTime": renewed, "leaseTransitions": transitions}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
