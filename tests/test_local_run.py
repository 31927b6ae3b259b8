"""``rto run -f run.yaml --local``: every stage in order, a summary, report.html, and a rerun that
keeps what is done."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

import pytest

from browser import needs_chromium, rendered_images
from conftest import SMALL_TINY, merge, pod_env, resource

RTO = Path(sys.executable).with_name("rto")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, embedded_models):
    """The small tiny run (select with the whole-pool comparison, sft, eval), done once for this module:
    (its output folder, the first run's console, the command). It starts from the session's pretrained
    embedded base, as a rerun of a local run finds its own."""
    import shutil

    folder = tmp_path_factory.mktemp("local-run")
    for part in ("base", "tokenizer"):
        shutil.copytree(embedded_models / part, folder / "outputs" / "small" / "models" / part)
    manifest = folder / "run.yaml"
    compared = merge(SMALL_TINY, {"stages": {"sft": {"compareWithPool": True}}})
    manifest.write_text(yaml.safe_dump(resource(compared, name="small")))
    command = [str(RTO), "run", "-f", str(manifest), "--local", "--output", str(folder / "outputs")]
    first = subprocess.run(command, capture_output=True, text=True, env=pod_env(RTO_METRICS_PORT="0"), timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    return folder / "outputs" / "small", first, command


def test_local_run_trains_every_stage_reports_and_resumes(small_run):
    root, first, command = small_run
    env = pod_env(RTO_METRICS_PORT="0")
    for stage in ("select", "sft", "eval"):
        assert (root / stage / "results.json").is_file()
    # One line per finished stage: what it achieved, and its peak memory against the plan's estimate,
    # which for a CPU stage is within 25% of the process's peak RSS.
    for stage in ("select", "sft", "eval"):
        line = next(line for line in first.stdout.splitlines() if line.startswith(f"[{stage}] done in "))
        result = json.loads((root / stage / "results.json").read_text())
        measured, planned = result["peakMemoryBytes"]["cpu"] / 2**30, result["plan"]["memory_gib"]
        assert f"peak memory {measured:.2f} GiB (planned {planned:.2f})" in line
        assert abs(planned - measured) <= 0.25 * measured, (stage, planned, measured)
    # The libraries' own logs, bars and warnings stay out of the console without -v.
    for noise in ("{'loss'", "it/s]", "LOAD REPORT", "gemm_4bit", "Warning", "[WARNING]"):
        assert noise not in first.stdout + first.stderr, noise
    summary = first.stdout[first.stdout.index("STAGE"):]
    assert [line.split()[0] for line in summary.splitlines()[1:4]] == ["select", "sft", "eval"]
    report = (root / "report.html").read_text()
    # One self-contained file: every chart embedded and captioned, nothing else to carry along.
    charts = ("Training loss", "Accuracy at the end of each stage", "Time per stage", "Peak memory per stage",
              "Select: PRM scores of the trace pool", "SFT on the selected subset against the whole pool",
              "Memory and step time against FLOPs")
    for chart in charts:
        assert f'alt="{chart}"' in report and f"<figcaption><b>{chart}.</b>" in report
    assert report.count('src="data:image/png;base64,') >= len(charts) and not (root / "charts").exists()
    sft = json.loads((root / "sft" / "results.json").read_text())
    assert sft["details"]["whole_pool"]["examples"] > sft["details"]["generator"]["examples"]
    # Every evaluated accuracy comes with its 95% interval, in results.json and in the report.
    evaluated = json.loads((root / "eval" / "results.json").read_text())["details"]["arithmetic"]
    for method in ("pass@1", "rm@k", "majority@k"):
        low, high = evaluated["ci95"][method]
        assert low <= evaluated[method] <= high and high - low > 0
    assert "95% intervals" in report

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0
    assert again.stdout.count("already done") == 3


@needs_chromium
def test_the_runs_report_renders_every_chart_in_a_browser(small_run):
    root, _, _ = small_run
    report = root / "report.html"
    images = rendered_images(report)
    assert len(images) == report.read_text().count("<img ") >= 7
    assert all(width > 100 and height > 100 for _, width, height in images), images
