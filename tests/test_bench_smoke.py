"""Each benchmark's --quick mode runs once here; timings are never asserted."""

import subprocess
import sys

from conftest import ROOT


def test_planner_memory_quick_prints_predicted_and_measured_rows():
    result = subprocess.run([sys.executable, str(ROOT / "bench/planner_memory.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| Qwen2.5-tiny")]
    assert len(rows) == 2
    assert all(len(row.split("|")) == 11 for row in rows)


def test_sft_throughput_quick_compares_packed_and_padded_batches():
    result = subprocess.run([sys.executable, str(ROOT / "bench/sft_throughput.py"), "--quick"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[2].strip(): line for line in result.stdout.splitlines() if line.startswith("| tiny")}
    assert set(rows) == {"packed", "padded"}
    assert rows["packed"].split("|")[7].strip() == "0%"  # packing processes no padding
    assert "packed / padded tokens per second" in result.stdout
    assert "rollout generation" in result.stdout
