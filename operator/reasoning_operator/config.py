"""The operator's own settings: what every run shares, read once from the environment.

The chart sets these on the operator Deployment; ``rto operator`` flags override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

DEFAULT_TRAINER_IMAGE = "ghcr.io/reasoning-operator/trainer:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # Seconds between the safety-net passes over every run. Watches drive the passes; a resync
    # reads only the operator's cache, so an idle run costs no API request.
    resync_seconds: float = 30.0
    # Runs reconciled at once (each pass of one run waits for API calls most of its time).
    workers: int = 16
    # A stage pod that stays unschedulable this long is reported in the run's conditions.
    stuck_after_seconds: float = 600.0
    # Time a stage pod gets after SIGTERM to write a checkpoint (the trainer saves, then exits 143).
    termination_grace_seconds: int = 300
    # Memory-backed /dev/shm per GPU for NCCL and data loaders (GiB), at least 1 GiB per pod.
    shm_gib_per_gpu: int = 8
    # Service account of the stage pods; empty means the namespace's default.
    trainer_service_account: str = ""
    metrics_port: int = 8080
    # Seconds a stage pod keeps serving its final metrics after the stage ends, so that at least
    # one scrape (15-30 s apart) sees the last values, eval accuracy among them.
    metrics_linger_seconds: int = 45

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorConfig:
        """RTO_TRAINER_IMAGE, RTO_RESYNC_SECONDS, ... (the field name upper-cased, prefixed RTO_)."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get(f"RTO_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(field.default)
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(f"RTO_{field.name.upper()}: expected a {kind.__name__}, got {raw!r}") from None
        return cls(**values)
