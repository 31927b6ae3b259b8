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
