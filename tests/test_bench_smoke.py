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


def _quick(script: str, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_prm_scoring_quick_shows_both_ways_agree_for_4_8_and_16_steps():
    rows = [line.split("|") for line in _quick("prm_scoring.py").splitlines() if line[:3].strip("| ").isdigit()]
    assert [row[1].strip() for row in rows] == ["4", "8", "16"]
    assert all(float(row[5]) < 1e-4 for row in rows)  # one pass gives the prefixes' scores


def test_search_batching_quick_grows_identical_trees_batched_and_from_cached_paths():
    rows = [line for line in _quick("search_batching.py").splitlines() if line.startswith("| 4 ")]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith("yes") for row in rows)


def test_operator_scale_quick_creates_every_first_stage_job():
    rows = [line for line in _quick("operator_scale.py").splitlines() if line.startswith("| 10 ")]
    assert len(rows) == 1 and "MiB" in rows[0]
