"""Checkpoints a killed stage can resume from: a checkpoint counts only once it is complete.

Trainer-managed checkpoints (``checkpoint-<step>`` folders) get a ``COMPLETE`` marker after
the Trainer has written every file; a folder without it is a write cut short by a kill and is
ignored on resume. Our own artifacts are written into a temporary sibling and renamed into
place, so a reader sees the old version or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MARKER = "COMPLETE"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(folder: Path) -> None:
    (folder / MARKER).write_text("")


def latest_complete(folder: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` under folder that was completely written."""
    if not folder.is_dir():
        return None
    done = [(int(match.group(1)), path) for path in folder.iterdir()
            if (match := _STEP.match(path.name)) and (path / MARKER).is_file()]
    return max(done)[1] if done else None


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        mark_complete(staging)
        if target.exists():
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2)  # key order kept: stages stay in run order
    os.replace(temporary, path)


def read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


class StopRequest:
    """Turns SIGTERM (Kubernetes eviction, preemption, `kubectl delete`) into a flag the
    training loops poll: they save a checkpoint and exit instead of dying mid-write."""

    # The process's installed request, for work that runs inside model loading and gets no
    # `stop` of its own (the embedded base's pretraining).
    installed: StopRequest | None = None

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopRequest:
        signal.signal(signal.SIGTERM, self._handle)
        StopRequest.installed = self
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True


def stop_requested() -> bool:
    return StopRequest.installed is not None and StopRequest.installed.requested
