"""The trainer's Prometheus endpoint: every metric is served and promtool accepts the exposition."""

import shutil
import socket
import subprocess
import urllib.request

import pytest

from reasoning_trainer.metrics import GPU_METRICS, METRICS, StageMetrics


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def exposition():
    metrics = StageMetrics("run-a", "team-ml", "sft")
    port = metrics.serve(_free_port())
    metrics.step("generator", seconds=0.5, tokens=1000, step=1)
    metrics.loss("generator", step=1, loss=1.25, learning_rate=1e-4)
    metrics.accuracy("gsm8k", "pass@1", 0.4)
    metrics.reward("generator", 2.5, step=1)
    metrics.search(parallelism=3.0, nodes=12.0, tokens=300.0)
    metrics.ppo("policy", policy_loss=0.1, value_loss=2.0, entropy=1.2)
    metrics.progress(0.5)
    metrics.mfu("generator", 0.31)
    metrics.flops("generator", 6.0e12)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_every_metric_is_served_with_run_labels(exposition):
    for name, (kind, _, _) in METRICS.items():
        sample = name if kind != "histogram" else f"{name}_count"
        line = next((line for line in exposition.splitlines() if line.startswith(sample + "{")), None)
        assert line is not None, f"{sample} missing"
        assert 'run="run-a"' in line and 'namespace="team-ml"' in line and 'stage="sft"' in line
    assert 'rto_accuracy_ratio{benchmark="gsm8k",metric="pass@1",namespace="team-ml",run="run-a",stage="sft"} 0.4' \
        in exposition
    assert "rto_tokens_per_second" in exposition and " 2000.0" in exposition  # 1000 tokens in 0.5 s


def test_gpu_memory_families_are_declared(exposition):
    # On a CPU machine the families are present without samples; on a GPU one per device.
    for name in GPU_METRICS:
        assert f"# TYPE {name} gauge" in exposition


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_exposition(exposition):
    checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_endpoint_lingers_after_the_stage_so_the_final_values_are_scraped():
    import threading
    import time

    metrics = StageMetrics("run-b", "team-ml", "eval")
    port = metrics.serve(_free_port())
    metrics.accuracy("gsm8k", "pass@1", 0.75)  # eval sets its accuracy last
    lingering = threading.Thread(target=metrics.linger, args=(1.5,))
    started = time.monotonic()
    lingering.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert 'metric="pass@1"' in response.read().decode()
    lingering.join()
    assert time.monotonic() - started >= 1.5


def test_a_taken_port_does_not_stop_training():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        assert StageMetrics("r", "n", "eval").serve(taken.getsockname()[1]) is None
