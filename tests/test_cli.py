"""``rto plan`` and ``rto validate`` as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, resource
from reasoning_trainer.cli import main

RTO = Path(sys.executable).with_name("rto")


def test_console_script_plans_a_preset():
    result = subprocess.run([str(RTO), "plan", "--preset", "fast", "--gpu-memory", "24Gi"],
                            capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "Plan for run 'fast' (preset fast) on 24 GiB GPUs"
    assert lines[2].split() == ["STAGE", "GPUS", "PRECISION", "ZERO", "CKPT", "BATCH", "MEM/GPU", "PLACEMENT"]
    rl = next(line for line in lines if line.startswith("rl "))
    assert rl.split()[:3] == ["rl", "1", "bf16"]
    assert "generator->cuda:0" in rl


def test_plan_json_has_snake_case_keys(capsys):
    assert main(["plan", "-f", str(ROOT / "manifests/examples/run.yaml"), "--gpu-memory", "80Gi", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run"] == "gsm8k-fast"
    assert data["gpu_memory_gib"] == 80
    rl = data["stages"]["rl"]
    assert {"gpus", "load_in_8bit", "zero_stage", "memory_gib", "placement"} <= set(rl)
    assert rl["load_in_8bit"] == {"generator": False, "rewardModel": False}


def test_plan_yaml_is_the_same_plan(capsys):
    main(["plan", "--preset", "full", "-o", "json"])
    as_json = json.loads(capsys.readouterr().out)
    main(["plan", "--preset", "full", "-o", "yaml"])
    assert yaml.safe_load(capsys.readouterr().out) == as_json


def test_gpu_memory_flag_changes_the_plan(capsys):
    main(["plan", "--preset", "full", "--gpu-memory", "24Gi", "-o", "json"])
    small = json.loads(capsys.readouterr().out)
    main(["plan", "--preset", "full", "--gpu-memory", "80Gi", "-o", "json"])
    large = json.loads(capsys.readouterr().out)
    assert small["stages"]["rl"]["load_in_8bit"]["generator"] is True
    assert large["stages"]["rl"]["load_in_8bit"]["generator"] is False


def test_validate_accepts_the_examples(capsys):
    for example in sorted((ROOT / "manifests/examples").glob("*.yaml")):
        assert main(["validate", "-f", str(example)]) == 0, example
    assert "is valid" in capsys.readouterr().out


def test_validate_exits_nonzero_with_field_paths(write_manifest, capsys):
    path = write_manifest(resource({"preset": "fast", "stages": {"sft": {"batchSize": 0, "learningRate": -1}}}))
    assert main(["validate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.stages.sft.batchSize: must be at least 1, got 0" in err
    assert "spec.stages.sft.learningRate: must be greater than 0" in err


def test_validate_reports_a_plan_that_cannot_fit(write_manifest, capsys):
    path = write_manifest(resource({"preset": "full", "models": {"generator": {"loadIn8bit": False}}}))
    assert main(["validate", "-f", str(path)]) == 1
    assert "spec.stages.rl: does not fit on 24 GiB GPUs" in capsys.readouterr().err


def test_invalid_yaml_is_reported(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    assert main(["validate", "-f", str(path)]) == 1
    assert "is not valid YAML" in capsys.readouterr().err


def test_schema_planner_and_crd_import_without_torch():
    """The operator image has no torch: blocking its import must not break the light core."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "import reasoning_trainer.cli, reasoning_trainer.planner, reasoning_operator.crd\n"
            "from reasoning_trainer.schema import validate_spec\n"
            "from reasoning_trainer.planner import plan_run\n"
            "print(plan_run(validate_spec({'preset': 'full'})).gpus)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "2"


def test_make_install_puts_a_working_rto_on_the_path(tmp_path):
    bindir = tmp_path / "bin"
    # -o: the venv this test runs in is the one to link, whatever the timestamps say
    made = subprocess.run(["make", "-s", "-o", ".venv/.installed", "install", f"BINDIR={bindir}"], cwd=ROOT,
                          capture_output=True, text=True,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"rto is on your PATH: {bindir}/rto"
    presets = subprocess.run(["rto", "presets"], capture_output=True, text=True, cwd=tmp_path,
                             env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert presets.returncode == 0 and presets.stdout.startswith("2gpu ")


def test_a_closed_pipe_ends_rto_quietly():
    piped = subprocess.run(f"'{RTO}' presets | head -1", shell=True,
                           capture_output=True, text=True)
    assert piped.stdout.startswith("2gpu ") and piped.stderr == ""


def fake_run(folder: Path, sft_seconds: float, accuracy: float) -> Path:
    for stage, seconds in (("sft", sft_seconds), ("eval", 10.0)):
        (folder / stage).mkdir(parents=True)
        result = {"durationSeconds": seconds, "accuracy": accuracy, "peakMemoryBytes": {"cpu": 2**29},
                  "metrics": {"arithmetic/pass@1": accuracy} if stage == "eval" else {},
                  "history": [{"step": step, "role": "generator", "loss": 1 / step} for step in (1, 2, 3)]
                  if stage == "sft" else []}
        (folder / stage / "results.json").write_text(json.dumps(result))
    return folder


def test_rto_compare_draws_one_bar_or_line_per_run(tmp_path, capsys):
    full = fake_run(tmp_path / "full-pool", 300.0, 0.61)
    selected = fake_run(tmp_path / "selected", 60.0, 0.63)
    target = tmp_path / "compare.html"
    assert main(["compare", str(full), str(selected), "--output", str(target)]) == 0
    assert capsys.readouterr().out == f"comparison: {target} (full-pool, selected)\n"
    page = target.read_text()
    assert "<h1>Compare full-pool, selected</h1>" in page and "<td>full-pool</td><td>sft, eval</td><td>310</td>" in page
    for title in ("Accuracy by run", "Time per stage by run", "Peak memory per stage by run", "Training loss by run"):
        assert f"<figcaption><b>{title}.</b>" in page
    assert main(["compare", str(tmp_path / "empty")]) == 1
    assert "holds no stage results" in capsys.readouterr().err
