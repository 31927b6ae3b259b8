"""The trainer's Prometheus metrics, defined once: the exporter, the dashboard and the tests
all read these names.

Every series carries the labels run, namespace and stage; model-specific ones add role.
The HTTP server is best effort: a port already taken or any exporter failure is logged and
training goes on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .console import StageProgress
from .tracking import Trackers, metric_key

log = logging.getLogger(__name__)

DEFAULT_PORT = 9400
PORT_ENV = "RTO_METRICS_PORT"
# Seconds the endpoint stays up after a stage ends, so that Prometheus scrapes the final values
# (eval accuracy is set last) before the pod exits; the operator sets it on every stage pod.
LINGER_ENV = "RTO_METRICS_LINGER_SECONDS"
BASE_LABELS = ("run", "namespace", "stage")
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# name -> (kind, help, extra labels); the exporter and the dashboard generator both use it.
METRICS = {
    "rto_step_duration_seconds": ("histogram", "Wall time of one optimizer or search step.", ("role",)),
    "rto_steps_total": ("counter", "Optimizer or search steps completed.", ("role",)),
    "rto_tokens_total": ("counter", "Tokens processed (trained on, scored or generated).", ("role",)),
    "rto_flops_total": ("counter", "FLOPs spent training, generating and scoring, counted from tokens and model "
                                   "shapes.", ("role",)),
    "rto_tokens_per_second": ("gauge", "Tokens processed per second over the last step.", ("role",)),
    "rto_loss": ("gauge", "Training loss of the last logged step.", ("role",)),
    "rto_learning_rate": ("gauge", "Learning rate of the last step.", ("role",)),
    "rto_reward": ("gauge", "Mean reward of the last RL iteration.", ("role",)),
    "rto_accuracy_ratio": ("gauge", "Accuracy (0..1) by benchmark and metric (pass@1, rm@k, train, ...).",
                           ("benchmark", "metric")),
    "rto_average_parallelism": ("gauge", "Mean branches explored per problem in tree search.", ()),
    "rto_search_nodes_per_problem": ("gauge", "Reasoning steps the tree search generated per problem.", ()),
    "rto_search_tokens_per_problem": ("gauge", "Tokens the tree search generated per problem.", ()),
    "rto_policy_loss": ("gauge", "PPO clipped-surrogate loss of the last update.", ("role",)),
    "rto_value_loss": ("gauge", "PPO value loss of the last update.", ("role",)),
    "rto_policy_entropy": ("gauge", "Mean entropy of the policy's action distribution in the last update.", ("role",)),
    "rto_stage_progress_ratio": ("gauge", "Fraction of the stage's work done (0..1).", ()),
    "rto_mfu_ratio": ("gauge", "Model FLOPs utilisation of training on GPU (0..1).", ("role",)),
}
GPU_METRICS = {
    "rto_gpu_memory_allocated_bytes": "Memory held by live tensors, per device.",
    "rto_gpu_memory_reserved_bytes": "Memory reserved by PyTorch's caching allocator, per device.",
    "rto_gpu_memory_peak_bytes": "Peak memory held by tensors since the stage started, per device.",
    "rto_gpu_memory_used_bytes": "Device memory in use by all processes (NVML), per device.",
    "rto_gpu_memory_total_bytes": "Device memory size (NVML), per device.",
}


def memory_in_use_gib() -> float:
    """What the stage holds now: the most tensor memory on any GPU, or the process's resident memory."""
    import torch

    if torch.cuda.is_available():
        return max(torch.cuda.memory_allocated(index) for index in range(torch.cuda.device_count())) / 2**30
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


@dataclass
class StageMetrics:
    """The metrics of one stage process, and the history the report draws."""

    run: str
    namespace: str
    stage: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    history: list[dict] = field(default_factory=list)
    trackers: Trackers | None = None
    display: StageProgress | None = None  # the console's progress bar or lines

    def __post_init__(self) -> None:
        self._base = {"run": self.run, "namespace": self.namespace, "stage": self.stage}
        self._step = 0  # the latest training step seen: trackers plot every value against it
        self.flops_by_role: dict[str, float] = {}
        self._metrics = {}
        for name, (kind, description, extra) in METRICS.items():
            labels = BASE_LABELS + extra
            if kind == "histogram":
                metric = Histogram(name, description, labels, registry=self.registry, buckets=STEP_BUCKETS)
            elif kind == "counter":
                metric = Counter(name.removesuffix("_total"), description, labels, registry=self.registry)
            else:
                metric = Gauge(name, description, labels, registry=self.registry)
            self._metrics[name] = metric
        self.registry.register(_GpuMemoryCollector(self._base))
        self._started = time.monotonic()
        self._port: int | None = None

    def _series(self, name: str, **labels):
        return self._metrics[name].labels(**self._base, **labels)

    def _set(self, name: str, value: float, step: int | None = None, **labels: str) -> None:
        """A gauge, and the same value to the stage's experiment trackers."""
        self._series(name, **labels).set(value)
        if step is not None:
            self._step = max(self._step, step)
        if self.trackers is not None:
            self.trackers.log(metric_key(name, *labels.values()), value, self._step)

    def step(self, role: str, seconds: float, tokens: int, step: int) -> None:
        self._series("rto_step_duration_seconds", role=role).observe(seconds)
        self._series("rto_steps_total", role=role).inc()
        self._series("rto_tokens_total", role=role).inc(tokens)
        self._step = max(self._step, step)
        if seconds > 0:
            self._set("rto_tokens_per_second", tokens / seconds, role=role)
        # Time and memory against FLOPs, early and late in the stage: the report's cost figure.
        self._record({"step": step, "role": role, "step_seconds": seconds, "memory_gib": memory_in_use_gib()})

    def flops(self, role: str, amount: float) -> None:
        """FLOPs just spent by ``role``'s model (reasoning_trainer.flops counts them)."""
        self._series("rto_flops_total", role=role).inc(amount)
        self.flops_by_role[role] = self.flops_by_role.get(role, 0.0) + amount
        if self.trackers is not None:
            self.trackers.log(metric_key("rto_flops_total", role), self.flops_by_role[role], self._step)

    @property
    def flops_total(self) -> float:
        return sum(self.flops_by_role.values())

    def loss(self, role: str, step: int, loss: float, learning_rate: float | None = None) -> None:
        self._set("rto_loss", loss, step, role=role)
        if learning_rate is not None:
            self._set("rto_learning_rate", learning_rate, step, role=role)
        self._record({"step": step, "role": role, "loss": loss})

    def accuracy(self, benchmark: str, metric: str, value: float, step: int | None = None) -> None:
        self._set("rto_accuracy_ratio", value, step, benchmark=benchmark, metric=metric)
        self._record({"step": step, "benchmark": benchmark, "metric": metric, "accuracy": value})

    def reward(self, role: str, value: float, step: int) -> None:
        self._set("rto_reward", value, step, role=role)
        self._record({"step": step, "role": role, "reward": value})

    def _record(self, point: dict) -> None:
        """A point of the report's history, with the stage's FLOPs so far: its x-axis option."""
        self.history.append({**point, "flops": self.flops_total} if self.flops_by_role else point)

    def search(self, parallelism: float, nodes: float, tokens: float) -> None:
        """Per-problem averages of the last tree search."""
        self._set("rto_average_parallelism", parallelism)
        self._set("rto_search_nodes_per_problem", nodes)
        self._set("rto_search_tokens_per_problem", tokens)
        self._record({"step": self._step, "parallelism": parallelism})

    def ppo(self, role: str, policy_loss: float, value_loss: float, entropy: float) -> None:
        self._set("rto_policy_loss", policy_loss, role=role)
        self._set("rto_value_loss", value_loss, role=role)
        self._set("rto_policy_entropy", entropy, role=role)

    def progress(self, done: float) -> None:
        done = min(max(done, 0.0), 1.0)
        self._set("rto_stage_progress_ratio", done)
        if self.display is not None:
            self.display.update(done)

    def mfu(self, role: str, value: float) -> None:
        self._set("rto_mfu_ratio", value, role=role)

    def serve(self, port: int | None = None) -> int | None:
        """Start the /metrics endpoint; returns the port, or None when it could not start."""
        port = int(os.environ.get(PORT_ENV, DEFAULT_PORT)) if port is None else port
        if port <= 0:
            return None
        try:
            start_http_server(port, registry=self.registry)
        except OSError as error:
            log.warning("metrics endpoint not started on port %s (%s); training goes on without it", port, error)
            return None
        self._port = port
        return port

    def linger(self, seconds: float | None = None) -> None:
        """Keep serving the final values for ``seconds`` ($RTO_METRICS_LINGER_SECONDS, default 0)."""
        seconds = float(os.environ.get(LINGER_ENV, 0)) if seconds is None else seconds
        if self._port is not None and seconds > 0:
            log.info("serving the final metrics on port %s for %.0f s", self._port, seconds)
            time.sleep(seconds)


class _GpuMemoryCollector:
    """Reads device memory at scrape time, so the numbers are current rather than last-logged."""

    def __init__(self, base: dict[str, str]) -> None:
        self._base = base

    def collect(self):
        import torch

        families = {name: GaugeMetricFamily(name, text, labels=[*BASE_LABELS, "device"])
                    for name, text in GPU_METRICS.items()}
        try:
            devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else ()
            for index in devices:
                labels = [*self._base.values(), f"cuda:{index}"]
                families["rto_gpu_memory_allocated_bytes"].add_metric(labels, torch.cuda.memory_allocated(index))
                families["rto_gpu_memory_reserved_bytes"].add_metric(labels, torch.cuda.memory_reserved(index))
                families["rto_gpu_memory_peak_bytes"].add_metric(labels, torch.cuda.max_memory_allocated(index))
                used_total = _nvml_memory(index)
                if used_total:
                    families["rto_gpu_memory_used_bytes"].add_metric(labels, used_total[0])
                    families["rto_gpu_memory_total_bytes"].add_metric(labels, used_total[1])
        except Exception as error:  # a scrape must never take the trainer down
            log.debug("GPU memory not read: %s", error)
        yield from families.values()


def _nvml_memory(index: int) -> tuple[int, int] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return info.used, info.total
    except Exception:  # no NVML library or driver: allocator figures are still exported
        return None
