"""Operator scale: time from creating N ReasoningTrainings to all of their first-stage Jobs
existing, creations per second, and the operator's peak RSS.

The operator runs as its own process (``kopf run -m reasoning_operator.app``) against kmock's
Kubernetes emulator (tests/kube_emulator.py), reached through a kubeconfig. kmock matches each
request against its whole request history, which makes it quadratic in the number of requests;
here it keeps only the latest requests, and still lists by scanning every object it holds, so at
large N part of the time is the emulator's. With --cluster the runs go to a real control plane
(KUBECONFIG's when it answers, else the kit in ../shared/k8s, started and stopped here) and the
real ``rto operator``; it also measures the API server's request rate while the runs sit idle
mid-stage, and how fast a finished stage's Job is followed by the next one.

    python bench/operator_scale.py            # N = 100 and 500 against the emulator
    python bench/operator_scale.py --quick    # N = 10, a smoke run for make test
    python bench/operator_scale.py --cluster  # N = 100 and 500 on a real control plane (KUBECONFIG's, else the kit)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import kmock
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the emulator and the kit are test support code
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from kit import KIT, KIT_ENV, free_port  # noqa: E402
from kube_emulator import ApiServerEmulator  # noqa: E402

KIT_NODES = KIT / "nodes.sh"

NAMESPACE = "scale"
HISTORY = 64


class ShortMemoryEmulator(ApiServerEmulator):
    """Forgets all but the latest requests, so matching a request does not scan the whole run."""

    async def _handle(self, request):
        del self._requests[:-HISTORY]
        return await super()._handle(request)
SPEC = {"preset": "fast", "storage": {"size": "10Gi"}}
STAGES = ["select", "sft", "rl", "eval"]
# Runs whose first stage pod stays Running (kwok), so they sit idle mid-stage.
# They share one claim: the kit's provisioner (a Python script) binds claims far slower than the
# operator creates them, and would be what the figures measure.
IDLE_SPEC = {"preset": "tiny", "storage": {"existingClaim": "shared"},
             "podAnnotations": {"kwok.x-k8s.io/outcome": "running"}}
QUICK_SPEC = {"preset": "tiny", "storage": {"size": "1Gi"},
              "podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}}
IDLE_WINDOW = 30.0


def kubeconfig(server: str, folder: str) -> str:
    path = Path(folder) / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}]}))
    return str(path)


def start_operator(config_path: str) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": config_path, "RTO_METRICS_PORT": "0", "RTO_RESYNC_SECONDS": "30"}
    return subprocess.Popen([sys.executable, "-m", "kopf", "run", "-m", "reasoning_operator.app", "--standalone",
                             "--all-namespaces", "--quiet"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def create_runs(server: str, count: int) -> None:
    path = f"{server}/apis/reasoning.dev/v1alpha1/namespaces/{NAMESPACE}/reasoningtrainings"
    limit = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:
        async def one(number: int):
            body = {"apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining",
                    "metadata": {"name": f"run-{number}", "namespace": NAMESPACE}, "spec": SPEC}
            async with limit, session.post(path, json=body) as response:
                assert response.status < 400, await response.text()

        await asyncio.gather(*(one(number) for number in range(count)))


def first_jobs(emulator: ShortMemoryEmulator) -> int:
    return sum(1 for (resource, namespace, name), obj in list(emulator.objects.items())
               if resource.plural == "jobs" and namespace == NAMESPACE and not obj.deleted)


async def measure(count: int) -> dict:
    async with ShortMemoryEmulator() as emulator, kmock.Server(emulator):
        server = str(emulator.url).rstrip("/")
        with tempfile.TemporaryDirectory() as folder:
            operator = start_operator(kubeconfig(server, folder))
            try:
                await asyncio.sleep(3)  # kopf's start-up: discovery, watch streams
                started = time.perf_counter()
                await create_runs(server, count)
                created = time.perf_counter()
                deadline = created + 600
                while first_jobs(emulator) < count:
                    if operator.poll() is not None:
                        raise RuntimeError(f"the operator exited: {operator.stderr.read()[-2000:]}")
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"only {first_jobs(emulator)} of {count} Jobs after 600 s")
                    await asyncio.sleep(0.05)
                done = time.perf_counter()
                rss = peak_rss_mib(operator.pid)
            finally:
                operator.terminate()
                try:
                    operator.wait(30)
                except subprocess.TimeoutExpired:  # still draining hundreds of runs' handlers
                    operator.kill()
                    operator.wait()
    return {"runs": count, "create_seconds": created - started, "all_jobs_seconds": done - started,
            "runs_per_second": count / (done - started), "peak_rss_mib": rss}


def measure_on_cluster(count: int) -> dict:
    """The same on a real control plane (KUBECONFIG's, else the kit that tests/e2e starts), with the
    real ``rto operator``; then, with every run idle mid-stage (pods that stay Running), the API
    server's own request rate with the operator running against its rate with the operator stopped."""
    from kit import Cluster, JobWatcher, wait_for

    cluster = Cluster.start()
    try:
        if cluster.kit_state is not None:  # room for every stage pod of the idle runs
            subprocess.run([str(KIT_NODES), str(count // 100 + 1), "8"], env={**os.environ, **KIT_ENV},
                           check=True, capture_output=True)
        cluster.apply(yaml.safe_load((ROOT / "manifests/crd.yaml").read_text()))
        cluster.kubectl("wait", "--for=condition=Established", "crd/reasoningtrainings.reasoning.dev")
        namespace = f"{NAMESPACE}-{int(time.time())}"
        cluster.kubectl("create", "namespace", namespace)
        cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
                       "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}},
                      namespace=namespace)
        watcher = JobWatcher(cluster, namespace)
        watcher.start()
        metrics_port = free_port()
        operator = subprocess.Popen([str(Path(sys.executable).parent / "rto"), "operator", "--standalone",
                                     f"--namespace={namespace}", f"--metrics-port={metrics_port}",
                                     "--liveness=http://127.0.0.1:0/"],
                                    env={**os.environ, "KUBECONFIG": cluster.kubeconfig}, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            started = time.perf_counter()
            runs = [{"apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining",
                     "metadata": {"name": f"run-{number}"}, "spec": IDLE_SPEC} for number in range(count)]
            for batch in range(0, count, 100):
                cluster.apply(*runs[batch:batch + 100], namespace=namespace)
            created = time.perf_counter()
            wait_for(lambda: len(watcher.created) >= count, 900, f"{count} first-stage Jobs", interval=0.05)
            done = time.perf_counter()
            # Idle means nothing changes any more: every stage pod Running and reported in the status.
            wait_for(lambda: all((run.get("status") or {}).get("phase") == "Running"
                                 for run in cluster.runs(namespace)), 900, "every run to report Running",
                     interval=2)
            settle(cluster)
            own_before = operator_requests(metrics_port)
            busy, busy_by_kind = request_rate(cluster, IDLE_WINDOW)
            own = (operator_requests(metrics_port) - own_before) / IDLE_WINDOW
            rss = peak_rss_mib(operator.pid)
        finally:
            operator.kill()
            operator.wait(30)
        quiet, quiet_by_kind = request_rate(cluster, IDLE_WINDOW)
        watcher.stop()
        handoff = handoff_seconds(cluster)
    finally:
        cluster.stop()
    return {"runs": count, "create_seconds": created - started, "all_jobs_seconds": done - started,
            "runs_per_second": count / (done - started), "peak_rss_mib": rss,
            "idle_requests": busy - quiet, "control_plane_requests": quiet, "handoff": handoff, "own_requests": own,
            "idle_by_kind": {key: rate - quiet_by_kind.get(key, 0.0) for key, rate in busy_by_kind.items()
                             if rate - quiet_by_kind.get(key, 0.0) > 0.05}}


def settle(cluster, window: float = 10.0, patience: float = 180.0) -> None:
    """Wait until the control plane's own work after the burst (scheduling, pod and Job status,
    events) has died down: two windows in a row within 20% of each other, or ``patience``."""
    deadline, last = time.monotonic() + patience, None
    while time.monotonic() < deadline:
        rate, _ = request_rate(cluster, window)
        if last is not None and abs(rate - last) <= 0.2 * max(last, 1.0):
            return
        last = rate


def operator_requests(port: int) -> float:
    """rto_operator_api_requests_total, all labels summed, from the operator's /metrics."""
    from urllib.request import urlopen

    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rto_operator_api_requests_total{"))


def request_rate(cluster, seconds: float) -> tuple[float, dict[str, float]]:
    """Requests per second that kube-apiserver counted (apiserver_request_total) over ``seconds``,
    in all and by verb and resource."""
    def counts() -> dict[str, float]:
        found: dict[str, float] = {}
        for line in cluster.kubectl("get", "--raw", "/metrics").splitlines():
            if line.startswith("apiserver_request_total{"):
                labels, value = line.rsplit(" ", 1)
                parsed = dict(part.split("=", 1) for part in labels[len("apiserver_request_total{"):-1].split(","))
                key = f"{parsed.get('verb', '?').strip(chr(34))} {parsed.get('resource', '?').strip(chr(34))}"
                found[key] = found.get(key, 0.0) + float(value)
        return found

    before = counts()
    time.sleep(seconds)
    after = counts()
    rates = {key: (value - before.get(key, 0.0)) / seconds for key, value in after.items()}
    return sum(rates.values()), {key: rate for key, rate in rates.items() if rate > 0}


def handoff_seconds(cluster, runs: int = 10) -> list[float]:
    """Job finished -> next stage's Job exists, for short tiny runs driven only by watch events."""
    from kit import JobWatcher, wait_for

    namespace = f"{NAMESPACE}-handoff-{int(time.time())}"
    cluster.kubectl("create", "namespace", namespace)
    watcher = JobWatcher(cluster, namespace)
    watcher.start()
    operator = subprocess.Popen([str(Path(sys.executable).parent / "rto"), "operator", "--standalone",
                                 f"--namespace={namespace}", "--metrics-port=0", "--liveness=http://127.0.0.1:0/"],
                                env={**os.environ, "KUBECONFIG": cluster.kubeconfig, "RTO_RESYNC_SECONDS": "3600"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        cluster.apply(*[{"apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining",
                         "metadata": {"name": f"handoff-{number}"}, "spec": QUICK_SPEC} for number in range(runs)],
                      namespace=namespace)
        wait_for(lambda: len(watcher.finished) >= runs * len(STAGES), 180, "every stage to finish")
    finally:
        operator.kill()
        operator.wait(30)
        watcher.stop()
    return [gap for number in range(runs) for gap in watcher.handoffs(f"handoff-{number}", STAGES)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cluster", action="store_true",
                        help="measure on a real control plane: KUBECONFIG's cluster, else the kit")
    parser.add_argument("--runs", type=int, action="append", help="run counts to measure (default 100 and 500)")
    args = parser.parse_args(argv)
    counts = args.runs or ((10,) if args.quick else (100, 500))
    if args.cluster:
        print("| runs | created in | all first-stage Jobs after | runs/s | operator peak RSS | idle: operator's "
              "requests/s | idle: API server with / without the operator | handoff median / max |")
        print("|---|---|---|---|---|---|---|---|")
        for count in counts:
            row = measure_on_cluster(count)
            gaps = sorted(row["handoff"])
            print(f"| {row['runs']} | {row['create_seconds']:.1f} s | {row['all_jobs_seconds']:.1f} s | "
                  f"{row['runs_per_second']:.1f} | {row['peak_rss_mib']:.0f} MiB | {row['own_requests']:.2f} | "
                  f"{row['control_plane_requests'] + row['idle_requests']:.1f} / {row['control_plane_requests']:.1f} | "
                  f"{gaps[len(gaps) // 2]:.2f} s / {gaps[-1]:.2f} s |",
                  flush=True)
            print(f"<!-- idle requests/s above the control plane's, by verb and resource: "
                  f"{', '.join(f'{key} {rate:.2f}' for key, rate in sorted(row['idle_by_kind'].items()))} -->",
                  flush=True)
        return 0
    print("| runs | created in | all first-stage Jobs after | runs/s | operator peak RSS |")
    print("|---|---|---|---|---|")
    for count in counts:
        row = asyncio.run(measure(count))
        print(f"| {row['runs']} | {row['create_seconds']:.1f} s | {row['all_jobs_seconds']:.1f} s | "
              f"{row['runs_per_second']:.1f} | {row['peak_rss_mib']:.0f} MiB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
