"""The metrics, the dashboard and the alert rules against a real Prometheus server (Debian's
prometheus and promtool).

Prometheus scrapes a real trainer (the rl stage, then eval, as `rto train` runs them in a pod)
and the real operator (kopf against kmock's API emulator) while runs move through their stages.
Then every dashboard query and variable must return data, and every alert rule must load,
evaluate and read series that exist. Two stand-in targets cover what needs a GPU: the trainer's
own GPU memory collector reading a stand-in device, and dcgm-exporter's text for one GPU.
"""

import asyncio
import http.server
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from kube_emulator import RUNS, ApiServerEmulator, Cluster, Operator, eventually, finish_stage

from conftest import ROOT, pod_env, resource
from reasoning_operator import dashboard, release
from reasoning_trainer import metrics as trainer_metrics

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs Debian's prometheus package (apt-get install prometheus; .ci/run installs it)")

RTO = Path(sys.executable).with_name("rto")
# The small rl (PGTS) and eval stages of the trainer tests.
STAGES = {"stages": {"select": {"enabled": False}, "sft": {"enabled": False},
                     "rl": {"enabled": True, "algorithm": "pgts", "iterations": 4, "problemsPerIteration": 4,
                            "batchSize": 2, "checkpointEvery": 2, "learningRate": 1e-3,
                            "pgts": {"maxDepth": 4, "maxNodes": 8, "searchBatch": 4}},
                     "eval": {"methods": ["pass@1", "rm@k", "pgts"], "k": 2}},
          "models": {"policy": {"hiddenSize": 32, "layers": 2, "heads": 4}}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def rules_file(tmp_path) -> Path:
    """The chart's PrometheusRule (default values), as a Prometheus rules file."""
    documents = release.render({"prometheusRule": {"enabled": True}}, root=ROOT)
    rule = next(document for document in documents if document["kind"] == "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> None:
    checked = subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, cwd=cwd)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_pass_promtool_and_fire_exactly_when_they_should(rules_file):
    promtool("check", "rules", str(rules_file))
    shutil.copy(ROOT / "tests/prometheus/alerts-test.yaml", rules_file.parent)
    promtool("test", "rules", "alerts-test.yaml", cwd=rules_file.parent)


class Prometheus:
    def __init__(self, folder: Path, targets: dict[str, int], rules: Path):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            # honor_labels as the chart's monitors set it: the series keep the run's namespace.
            "scrape_configs": [{"job_name": job, "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                               for job, port in targets.items()],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(folder / "prometheus.log", "w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def serve_text(text: str) -> tuple[http.server.HTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def gpu_standin(monkeypatch) -> int:
    """The trainer's GPU memory collector reading a stand-in 80 GB device (this machine has none)."""
    import torch

    for name, value in {"is_available": True, "device_count": 1, "memory_allocated": 31e9,
                        "memory_reserved": 36e9, "max_memory_allocated": 34e9}.items():
        monkeypatch.setattr(torch.cuda, name, lambda *args, value=value: value)
    monkeypatch.setattr(trainer_metrics, "_nvml_memory", lambda index: (38e9, 80e9))
    return trainer_metrics.StageMetrics("small", "tests", "rl").serve(free_port())


async def drive_operator(cluster: Cluster, operator: Operator) -> None:
    """A run in training (reconciled on every resync), one whose rl stage fails after sft succeeded,
    and one whose stored status is corrupt."""
    storage = {"storage": {"size": "10Gi"}}
    await cluster.apply(resource({**storage, "preset": "fast"}, "steady"))
    await eventually(lambda: cluster.jobs().get("steady-sft"))
    cluster.start_pod("steady-sft")
    await cluster.apply(resource({**storage, "preset": "fast"}, "watched"))
    await eventually(lambda: cluster.jobs().get("watched-sft"))
    await finish_stage(cluster, "watched-sft")
    await eventually(lambda: cluster.jobs().get("watched-rl"))
    cluster.fail_job("watched-rl")
    await eventually(lambda: cluster.status("watched").get("phase") == "Failed")
    await cluster.apply(resource({**storage, "preset": "fast"}, "corrupt"))
    await eventually(lambda: cluster.jobs().get("corrupt-sft"))
    # A hand-edited status the operator cannot read: every pass fails and is counted. A pass already
    # under way may write its status over the edit, so edit again until a failure is counted.
    def corrupted_and_counted():
        cluster.patch_object(RUNS, "corrupt", {"status": {"stages": {"sft": {"phase": "Exploded"}}}})
        return operator.memo.operator.metrics.registry.get_sample_value(
            "rto_operator_reconcile_errors_total", {"error": "ValidationError"})

    await eventually(corrupted_and_counted)


def run_trainer(plan: Path, port: int) -> None:
    env = pod_env(RTO_METRICS_PORT=str(port), RTO_METRICS_LINGER_SECONDS="3", OMP_NUM_THREADS="1")
    for stage in ("rl", "eval"):
        done = subprocess.run([str(RTO), "train", stage, "--plan", str(plan)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]


def substitute(expr: str, window: int) -> str:
    """What Grafana sends with every variable on "All" (a rate window of a few scrapes: one busy
    scrape of the in-process operator must not leave a window with a single sample)."""
    for variable in ("namespace", "run", "stage"):
        expr = expr.replace(f"${variable}", ".*")
    return expr.replace("$__rate_interval", "15s").replace("$__range", f"{window}s")


def finite_points(result: list[dict]) -> int:
    return sum(1 for series in result for _, value in series["values"] if math.isfinite(float(value)))


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_every_dashboard_query_and_alert_rule_returns_data_from_live_targets(
        kmock, tmp_path, plan_file, rules_file, monkeypatch):
    cluster = Cluster(kmock)
    operator_port, trainer_port = free_port(), free_port()
    operator = Operator(cluster, metrics_port=operator_port)
    dcgm, dcgm_port = serve_text((ROOT / "tests/prometheus/dcgm-exporter.prom").read_text())
    targets = {"trainer": trainer_port, "operator": operator_port, "gpu-standin": gpu_standin(monkeypatch),
               "dcgm-exporter": dcgm_port}
    prometheus = Prometheus(tmp_path, targets, rules_file)
    started = time.time()
    await operator.start()
    try:
        await eventually(prometheus.ready, timeout=60)
        await drive_operator(cluster, operator)
        await asyncio.to_thread(run_trainer, plan_file(STAGES), trainer_port)
        await asyncio.sleep(3)  # the last scrape and rule evaluation
        end = time.time()
        window = math.ceil(end - started)

        empty = []
        for row, panels in dashboard.queries().items():
            for title, panel_queries in panels.items():
                for query in panel_queries:
                    result = prometheus.api("query_range", query=substitute(query.expr, window),
                                            start=started, end=end, step=1)["result"]
                    if not finite_points(result):
                        empty.append(f"{row} / {title}: {query.expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        for variable in dashboard.build()["templating"]["list"][1:]:
            metric, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]).groups()
            values = prometheus.api(f"label/{label}/values", **{"match[]": substitute(metric, window)},
                                    start=started, end=end)
            assert values, variable["name"]
        assert "small" in prometheus.api("label/run/values", start=started, end=end)

        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 4 and all(rule["health"] == "ok" for rule in rules), rules
        for rule in rules:
            for name in set(re.findall(r"\b(rto_[a-z_]+|DCGM_[A-Z_]+)\b", rule["query"])):
                assert prometheus.api("query_range", query=f"count({name})", start=started, end=end,
                                      step=1)["result"], f"{rule['name']} reads {name}, which has no data"
        firing = {(alert["labels"]["alertname"], alert["labels"].get("run")) for alert in
                  prometheus.api("alerts")["alerts"] if alert["state"] == "firing"}
        assert ("ReasoningStageFailed", "watched") in firing

        with urllib.request.urlopen(f"http://127.0.0.1:{operator_port}/metrics", timeout=5) as response:
            promtool("check", "metrics", stdin=response.read().decode())
    finally:
        prometheus.stop()
        dcgm.shutdown()
        await operator.stop()
