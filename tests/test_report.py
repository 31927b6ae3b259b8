"""report.html draws what the research plots whenever the run has the data: rollout accuracy and
search parallelism against RL FLOPs."""

from __future__ import annotations

from browser import needs_chromium, rendered_images

from reasoning_trainer.report import write_comparison, write_report


def test_rl_accuracy_and_parallelism_are_drawn_against_flops(tmp_path):
    history = []
    for iteration in range(1, 7):
        spent = iteration * 1e12
        history += [{"step": iteration, "benchmark": "rollouts", "metric": "train", "accuracy": 0.1 * iteration,
                     "flops": spent},
                    {"step": iteration, "parallelism": 3.0 - 0.2 * iteration, "flops": spent}]
    rl = {"durationSeconds": 30.0, "accuracy": 0.6, "metrics": {}, "history": history,
          "peakMemoryBytes": {"cpu": 2**29}}
    page = write_report("demo", {"rl": rl}, tmp_path / "report.html").read_text()
    assert "<figcaption><b>Rollout accuracy against RL FLOPs.</b>" in page
    assert "<figcaption><b>Average parallelism against RL FLOPs.</b>" in page
    without = write_report("demo", {"rl": {**rl, "history": []}}, tmp_path / "plain.html").read_text()
    assert "against RL FLOPs" not in without


def full_results(scale: float = 1.0) -> dict[str, dict]:
    """A run with every figure's data: PRM selection, SFT on the selected traces and on the whole pool,
    GRPO with held-out evaluations on two benchmarks, and eval."""
    def steps(stage_flops: float, count: int, role: str) -> list[dict]:
        return [{"step": step, "role": role, "step_seconds": 0.1 + 0.01 * step, "memory_gib": 0.5 + 0.01 * step,
                 "flops": stage_flops * step} for step in range(1, count + 1)] + [
            {"step": step, "role": role, "loss": 1.0 / step, "flops": stage_flops * step} for step in range(1, count + 1)]
    evaluations = [{"iteration": iteration, "flops": iteration * 1e12,
                    "gsm8k": {"pass@1": 0.5 + 0.02 * iteration * scale, "rm@k": 0.6 + 0.02 * iteration * scale},
                    "math500": {"pass@1": 0.2 + 0.01 * iteration, "rm@k": 0.3 + 0.01 * iteration}}
                   for iteration in (0, 4, 8)]
    rl_history = steps(1e12, 8, "generator") + [
        {"step": step, "benchmark": "rollouts", "metric": "train", "accuracy": 0.1 * step, "flops": step * 1e12}
        for step in range(1, 9)]
    selected = {"examples": 250, "seconds": 10.0, "held_out_accuracy_before": 0.4, "held_out_accuracy_after": 0.55}
    return {
        "select": {"durationSeconds": 20.0, "accuracy": None, "metrics": {"kept": 250}, "history": [],
                   "details": {"histogram": {"edges": [i / 4 for i in range(5)], "pool": [1, 2, 3, 4],
                                             "kept": [0, 0, 1, 4]}}, "peakMemoryBytes": {"cpu": 2**29}},
        "sft": {"durationSeconds": 60.0, "accuracy": 0.55, "metrics": {"held_out_accuracy_after": 0.55},
                "history": steps(1e11, 10, "generator"), "peakMemoryBytes": {"cpu": 2**29},
                "details": {"generator": selected, "whole_pool": {**selected, "examples": 1000, "seconds": 40.0,
                                                                  "held_out_accuracy_after": 0.5}}},
        "rl": {"durationSeconds": 30.0, "accuracy": 0.66, "metrics": {}, "history": rl_history,
               "details": {"evaluations": evaluations}, "peakMemoryBytes": {"cpu": 2**29}},
        "eval": {"durationSeconds": 10.0, "accuracy": 0.6, "metrics": {"gsm8k/pass@1": 0.6}, "history": [],
                 "details": {"gsm8k": {"problems": 100, "pass@1": 0.6, "ci95": {"pass@1": [0.5, 0.7]}}},
                 "peakMemoryBytes": {"cpu": 2**29}},
    }


def test_a_model_trained_twice_in_a_stage_gets_two_loss_curves_and_parallelism_no_accuracy_line(tmp_path):
    from reasoning_trainer.report import loss_curves

    sft = full_results()["sft"]
    twice = [point for point in sft["history"] if "loss" in point]
    results = {"sft": {**sft, "history": twice + twice[:4]}}
    assert [len(curve) for curve in loss_curves(results)["sft: generator"]] == [10, 4]
    rl = {"durationSeconds": 1.0, "accuracy": None, "metrics": {}, "peakMemoryBytes": {"cpu": 2**29}, "history": [
        {"step": step, "benchmark": "arithmetic", "metric": metric, "accuracy": value}
        for step in (0, 8) for metric, value in (("pgts", 0.7), ("parallelism", 14.0))]}
    page = write_report("demo", {"rl": rl}, tmp_path / "report.html").read_text()
    assert "Accuracy during training" in page
    parallelism_only = {"rl": {**rl, "history": [p for p in rl["history"] if p["metric"] == "parallelism"]}}
    assert "Accuracy during training" not in write_report("demo", parallelism_only, tmp_path / "p.html").read_text()


FIGURES = ("Held-out accuracy during RL", "Memory and step time against FLOPs",
           "SFT on the selected subset against the whole pool", "Rollout accuracy against RL FLOPs")


def test_the_research_figures_are_drawn_whenever_the_run_has_their_data(tmp_path):
    page = write_report("demo", full_results(), tmp_path / "report.html").read_text()
    for figure in FIGURES:
        assert f"<figcaption><b>{figure}.</b>" in page, figure
    bare = {stage: {**result, "history": [], "details": {}} for stage, result in full_results().items()}
    plain = write_report("demo", bare, tmp_path / "plain.html").read_text()
    for figure in FIGURES:
        assert figure not in plain, figure


@needs_chromium
def test_every_chart_of_a_report_and_of_a_comparison_renders_in_a_browser(tmp_path):
    report = write_report("demo", full_results(), tmp_path / "report.html")
    images = rendered_images(report)
    assert len(images) == report.read_text().count("<img ") >= 10
    assert all(width > 100 and height > 100 for _, width, height in images), images
    assert {alt for alt, _, _ in images} >= set(FIGURES)
    comparison = write_comparison({"1.5b": full_results(), "7b": full_results(scale=2.0)}, tmp_path / "compare.html")
    drawn = rendered_images(comparison)
    assert all(width > 100 and height > 100 for _, width, height in drawn), drawn
    assert {"Held-out accuracy during RL", "SFT on the selected subset against the whole pool"} <= {
        alt for alt, _, _ in drawn}


def test_the_report_says_in_words_which_claims_the_run_does_not_bear_out_first(tmp_path):
    results = full_results()
    results["select"]["metrics"].update(prm_step_auroc=0.48, prm_position_baseline_step_auroc=0.71)
    results["rl"]["details"]["algorithm"] = "grpo"
    results["rl"]["metrics"].update(held_out_accuracy_before=0.55, held_out_accuracy_after=0.62)
    results["eval"]["details"]["gsm8k"].update({"rm@k": 0.58, "majority@k": 0.57, "pgts": 0.66, "cost": {
        "greedyTokensPerProblem": 30.0, "pgtsTokensPerProblem": 45.0, "pgtsParallelism": 2.5}})
    page = write_report("demo", results, tmp_path / "report.html").read_text()
    shown = page[page.index("<h2>What this run shows</h2>"):page.index("</ul>")]
    lines = shown.split("<li>")[1:]
    missed = [line for line in lines if "not borne out" in line]
    assert lines[:len(missed)] == missed, "claims the run does not bear out come first"
    assert any("no better than their position alone: step AUROC 0.480 against 0.710" in line and
               "0.5 is chance" in line for line in missed)
    assert any("gsm8k: rm@k 58.0% against pass@1 60.0% and majority@k 57.0%" in line for line in missed)
    held = [line for line in lines if line not in missed]
    assert any("gsm8k: pgts 66.0% against pass@1 60.0%" in line and
               "at 1.50x the tokens of greedy decoding (45.0 per problem against 30.0), parallelism 2.50." in line
               for line in held)
    assert any("GRPO moves held-out pass@1 from 55.0% to 62.0%" in line for line in held)
    assert any("reaches 55.0% held-out in 10 s; on the whole pool (1000 traces), 50.0% in 40 s (0.25x" in line
               for line in held)
    bare = {stage: {**result, "metrics": {}, "details": {}} for stage, result in full_results().items()}
    assert "What this run shows" not in write_report("demo", bare, tmp_path / "bare.html").read_text()
