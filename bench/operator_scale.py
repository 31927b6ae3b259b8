"""Operator scale: time from creating N ReasoningTrainings to all of their first-stage Jobs
existing, creations per second, and the operator's peak RSS.

The operator runs as its own process (``kopf run -m reasoning_operator.app``) against kmock's
Kubernetes emulator (tests/kube_emulator.py), reached through a kubeconfig. kmock matches each
request against its whole request history, which makes it quadratic in the number of requests;
here it keeps only the latest requests, and still lists by scanning every object it holds, so at
large N part of the time is the emulator's. With --cluster the same runs go to the cluster in
KUBECONFIG instead (the CRD is installed if missing; the runs live in a fresh namespace that is
deleted afterwards).

    python bench/operator_scale.py            # N = 100 and 500 against the emulator
    python bench/operator_scale.py --quick    # N = 10, a smoke run for make test
    python bench/operator_scale.py --cluster  # N = 100 and 500 on KUBECONFIG's cluster
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import kmock
import yaml
from reasoning_operator.kube import Kube

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the emulator is test support code

from kube_emulator import ApiServerEmulator  # noqa: E402

NAMESPACE = "scale"
HISTORY = 64


class ShortMemoryEmulator(ApiServerEmulator):
    """Forgets all but the latest requests, so matching a request does not scan the whole run."""

    async def _handle(self, request):
        del self._requests[:-HISTORY]
        return await super()._handle(request)
SPEC = {"preset": "fast", "storage": {"size": "10Gi"}}


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


async def measure_on_cluster(count: int) -> dict:
    """The same measurement against KUBECONFIG's cluster, in a namespace made for it."""
    import kopf

    client = Kube(kopf.login_via_client(settings=kopf.OperatorSettings(), logger=logging.getLogger("bench")))
    namespace = f"{NAMESPACE}-{int(time.time())}"
    try:
        await client.create(yaml.safe_load((ROOT / "manifests/crd.yaml").read_text()))
        await client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        operator = start_operator(os.environ["KUBECONFIG"])
        try:
            await asyncio.sleep(5)
            started = time.perf_counter()
            await asyncio.gather(*(client.create({
                "apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining",
                "metadata": {"name": f"run-{number}", "namespace": namespace}, "spec": SPEC})
                for number in range(count)))
            created = time.perf_counter()
            while len(await client.list("Job", namespace, {"app.kubernetes.io/name": "reasoning-trainer"})) < count:
                if time.perf_counter() - created > 900:
                    raise RuntimeError(f"not every first-stage Job exists after 900 s in {namespace}")
                await asyncio.sleep(0.5)
            done = time.perf_counter()
            rss = peak_rss_mib(operator.pid)
        finally:
            operator.terminate()
            operator.wait(60)
    finally:
        await client.delete("Namespace", None, namespace)
        await client.close()
    return {"runs": count, "create_seconds": created - started, "all_jobs_seconds": done - started,
            "runs_per_second": count / (done - started), "peak_rss_mib": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cluster", action="store_true", help="measure against the cluster in KUBECONFIG")
    args = parser.parse_args(argv)
    if args.cluster and not os.environ.get("KUBECONFIG"):
        parser.error("--cluster needs KUBECONFIG to name a cluster")
    print("| runs | created in | all first-stage Jobs after | runs/s | operator peak RSS |")
    print("|---|---|---|---|---|")
    for count in ((10,) if args.quick else (100, 500)):
        row = asyncio.run(measure_on_cluster(count) if args.cluster else measure(count))
        print(f"| {row['runs']} | {row['create_seconds']:.1f} s | {row['all_jobs_seconds']:.1f} s | "
              f"{row['runs_per_second']:.1f} | {row['peak_rss_mib']:.0f} MiB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
