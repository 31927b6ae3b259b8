"""What a stage process prints: its own log lines and one progress bar; the libraries it uses
(transformers, datasets, bitsandbytes, DeepSpeed) stay quiet unless asked with ``-v``.

On a terminal the progress is a bar with an ETA; elsewhere (a pod, a CI log) it is a log line
every tenth of the stage. ``--log-format json`` makes every log line a JSON object, for a
cluster's log pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from typing import TextIO

VERBOSE_ENV = "RTO_VERBOSE"
LOG_FORMAT_ENV = "RTO_LOG_FORMAT"
# Loggers of libraries whose INFO and WARNING lines are about themselves, not about the run.
NOISY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "peft", "bitsandbytes", "DeepSpeed",
                 "deepspeed", "torch.distributed", "httpx", "urllib3", "filelock", "matplotlib", "mlflow", "wandb",
                 "alembic")
NOISY_MODULES = r"(transformers|torch|peft|deepspeed|accelerate|bitsandbytes|datasets|huggingface_hub|tensorboard|" \
                r"google|mlflow|wandb|pydantic)(\.|$)"

log = logging.getLogger("reasoning_trainer")


def setup(verbose: bool = False, log_format: str = "text") -> None:
    """Logging for this process and, through the environment, for the stage processes it starts.
    Call before the training libraries are imported: some read their settings at import."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    os.environ[LOG_FORMAT_ENV] = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in NOISY_LOGGERS:
        # A filter, not only a level: some libraries (DeepSpeed) set their logger's level at import.
        logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(name).addFilter(_errors_only)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries() -> None:
    """Progress bars of libraries already imported (transformers' loading and saving bars)."""
    if verbose():
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class StageProgress:
    """The stage's progress (0..1): a redrawn bar with an ETA on a terminal, otherwise a log line
    at each tenth."""

    def __init__(self, stage: str, stream: TextIO | None = None):
        self.stage = stage
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.bar = None
        self.reported = 0
        if self.stream.isatty() and os.environ.get(LOG_FORMAT_ENV) != "json":
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=f"[{stage}]", file=self.stream, leave=False, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(self, done: float) -> None:
        if self.bar is not None:
            self.bar.update(round(done * 1000) - self.bar.n)
            return
        tenth = int(done * 10)
        if tenth > self.reported and done < 1.0:
            self.reported = tenth
            elapsed = time.monotonic() - self.started
            log.info("[%s] %d%% done, about %s left", self.stage, tenth * 10, duration(elapsed * (1 - done) / done))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"
