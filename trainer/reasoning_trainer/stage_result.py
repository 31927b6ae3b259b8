"""What a stage hands back: results.json on the volume, and a short JSON termination message
that the operator copies into the run's status."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TERMINATION_LOG_ENV = "RTO_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096


@dataclass
class StageResult:
    accuracy: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    details: dict = field(default_factory=dict)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def termination_message(stage: str, phase: str, duration: float, result: StageResult | None = None,
                        reason: str = "") -> str:
    """Strict JSON (the API server refuses NaN): a value that is not a finite number is left out
    and named under ``nonFinite``, so a diverged loss shows up as such in the run's status."""
    message = {"stage": stage, "phase": phase, "durationSeconds": round(duration, 1)}
    if result is not None:
        non_finite = [f"metrics.{key}" for key, value in result.metrics.items() if not _finite(value)]
        if result.accuracy is not None:
            if _finite(result.accuracy):
                message["accuracy"] = round(result.accuracy, 4)
            else:
                non_finite.insert(0, "accuracy")
        message["checkpoint"] = result.checkpoint
        message["metrics"] = {key: round(value, 4) for key, value in result.metrics.items() if _finite(value)}
        if non_finite:
            message["nonFinite"] = non_finite
    if reason:
        message["reason"] = reason[-1000:]
    text = json.dumps(message, separators=(",", ":"), allow_nan=False)
    while len(text.encode()) > TERMINATION_LIMIT and message.get("metrics"):
        message["metrics"].popitem()
        text = json.dumps(message, separators=(",", ":"), allow_nan=False)
    return text


def write_termination_message(text: str) -> None:
    """Best effort. The kubelet creates /dev/termination-log; elsewhere only RTO_TERMINATION_LOG is written."""
    path = Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))
    if TERMINATION_LOG_ENV not in os.environ and not path.exists():
        return
    try:
        path.write_text(text)
    except OSError as error:
        log.debug("termination message not written to %s: %s", path, error)
