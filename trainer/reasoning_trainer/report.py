"""report.html of a run: one self-contained file (charts embedded), readable without the outputs
folder. Per stage what it did and what it cost; every chart on axes of one quantity, with a
caption saying what it shows and how to read it."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .findings import findings  # noqa: E402


@dataclass(frozen=True)
class Chart:
    title: str
    caption: str
    png: bytes

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(self.title)}">'
                f"<figcaption><b>{html.escape(self.title)}.</b> {html.escape(self.caption)}</figcaption></figure>")


def write_report(run: str, results: dict[str, dict], target: Path) -> Path:
    charts = [chart for chart in (
        _loss_chart(results), _accuracy_chart(results), _curves_chart(results, "accuracy"),
        _curves_chart(results, "reward"), _against_flops(results, "accuracy"), _against_flops(results, "parallelism"),
        _held_out_during_rl({run: results}), _cost_against_flops(results), _pool_against_selected({run: results}),
        _time_chart(results), _memory_chart(results),
        _histogram_chart(results.get("select")),
    ) if chart is not None]
    body = [f"<h1>Run {html.escape(run)}</h1>", _findings_list(results), _results_table(results),
            _intervals_table(results)]
    body += [chart.html() for chart in charts]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("<!doctype html><meta charset=utf-8><title>reasoning-operator run "
                      f"{html.escape(run)}</title><style>body{{font-family:sans-serif;max-width:980px}}"
                      "td,th{padding:4px 10px;text-align:left}img{max-width:100%}"
                      "figcaption{color:#444;max-width:760px}</style>" + "\n".join(body))
    return target


def write_comparison(runs: dict[str, dict[str, dict]], target: Path) -> Path:
    """The same figures with one bar or line per run (model sizes, full pool against the selected
    subset, two learning rates), as the research compares configurations."""
    charts = [chart for chart in (
        _grouped(runs, "Accuracy by run", "accuracy (fraction of problems right)", _accuracies,
                 "Each eval method and held-out figure, one bar per run. Differences smaller than the 95% "
                 "intervals in each run's own report are noise."),
        _grouped(runs, "Time per stage by run", "seconds", lambda results: {
            stage: result["durationSeconds"] for stage, result in results.items()},
                 "Wall time of each stage, one bar per run: for the full pool against the selected subset, "
                 "compare the sft bars (training cost) and the rl bars."),
        _grouped(runs, "Peak memory per stage by run", "GiB", lambda results: {
            stage: max((result.get("peakMemoryBytes") or {"-": 0}).values()) / 2**30
            for stage, result in results.items()},
                 "The most memory each stage held, one bar per run."),
        _held_out_during_rl(runs), _pool_against_selected(runs),
        _run_lines(runs, "loss", "Training loss by run", "One panel per stage and model, one line per run."),
        _run_lines(runs, "reward", "Reward during RL by run", "Mean rollout reward per RL iteration, one line per "
                                                               "run."),
    ) if chart is not None]
    names = ", ".join(html.escape(name) for name in runs)
    rows = ["<tr><th>run</th><th>stages</th><th>total seconds</th></tr>"] + [
        f"<tr><td>{html.escape(name)}</td><td>{', '.join(results)}</td>"
        f"<td>{sum(result['durationSeconds'] for result in results.values()):.0f}</td></tr>"
        for name, results in runs.items()]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("<!doctype html><meta charset=utf-8><title>reasoning-operator: compare "
                      f"{names}</title><style>body{{font-family:sans-serif;max-width:980px}}"
                      "td,th{padding:4px 10px;text-align:left}img{max-width:100%}"
                      "figcaption{color:#444;max-width:760px}</style>"
                      f"<h1>Compare {names}</h1><table>{''.join(rows)}</table>"
                      + "\n".join(chart.html() for chart in charts))
    return target


def _accuracies(results: dict[str, dict]) -> dict[str, float]:
    return {f"{stage}: {key}": value for stage, result in results.items()
            for key, value in result["metrics"].items()
            if isinstance(value, float) and ("accuracy" in key or "@" in key)}


def _grouped(runs, title: str, unit: str, values, caption: str) -> Chart | None:
    table = {name: values(results) for name, results in runs.items()}
    labels = list(dict.fromkeys(label for found in table.values() for label in found))
    if not labels:
        return None
    width = 0.8 / len(runs)
    figure, ax = plt.subplots(figsize=(8, 0.35 * len(labels) * len(runs) + 1.2))
    for index, (name, found) in enumerate(table.items()):
        positions = [row + index * width for row in range(len(labels))]
        ax.barh(positions, [found.get(label, 0.0) for label in labels], height=width, label=name)
    ax.set_yticks([row + 0.4 - width / 2 for row in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.legend()
    return Chart(title, caption, _png(figure))


def _run_lines(runs, quantity: str, title: str, caption: str) -> Chart | None:
    panels: dict[str, dict[str, list]] = {}
    for name, results in runs.items():
        for stage, result in results.items():
            for point in result.get("history", []):
                if quantity in point and point.get("step") is not None:
                    panel = panels.setdefault(f"{stage}: {point.get('role', '')}", {})
                    panel.setdefault(name, []).append((point["step"], point[quantity]))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (label, lines) in zip(axes[0], panels.items()):
        for name, points in lines.items():
            ax.plot(*zip(*points), label=name)
        ax.set_title(label)
        ax.set_xlabel("step / iteration")
        ax.set_ylabel(quantity)
        ax.legend()
    return Chart(title, caption, _png(figure))


def _findings_list(results: dict[str, dict]) -> str:
    """The research's claims this run bears out and those it does not, the latter first."""
    found = findings(results)
    if not found:
        return ""
    items = "".join(f"<li>{'&#10003;' if finding.holds else '<b>&#10007; not borne out:</b>'} "
                    f"{html.escape(finding.text)}</li>" for finding in found)
    return f"<h2>What this run shows</h2><ul>{items}</ul>"


def _results_table(results: dict[str, dict]) -> str:
    rows = ["<tr><th>stage</th><th>seconds</th><th>accuracy</th><th>metrics</th></tr>"]
    for stage, result in results.items():
        accuracy = "-" if result.get("accuracy") is None else f"{result['accuracy']:.1%}"
        metrics = ", ".join(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}"
                            for key, value in result["metrics"].items())
        rows.append(f"<tr><td>{stage}</td><td>{result['durationSeconds']:.0f}</td><td>{accuracy}</td>"
                    f"<td>{html.escape(metrics)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _intervals_table(results: dict[str, dict]) -> str:
    """Every evaluated accuracy with its 95% interval: how far apart two figures must be to differ."""
    rows = []
    for stage, result in results.items():
        for benchmark, found in result.get("details", {}).items():
            if not isinstance(found, dict) or "ci95" not in found:
                continue
            for method, (low, high) in found["ci95"].items():
                rows.append(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(benchmark)}</td>"
                            f"<td>{html.escape(method)}</td><td>{found[method]:.1%}</td>"
                            f"<td>{low:.1%} - {high:.1%}</td><td>{found['problems']}</td></tr>")
    if not rows:
        return ""
    head = ("<h2>Accuracy with 95% intervals (Wilson)</h2><table><tr><th>stage</th><th>benchmark</th>"
            "<th>method</th><th>accuracy</th><th>95% interval</th><th>problems</th></tr>")
    return head + "".join(rows) + "</table>"


def loss_curves(results) -> dict[str, list[list[tuple[int, float]]]]:
    """Per stage and model, its loss curves: a new curve starts where the step count starts over (sft
    trains the selection, then a copy on the whole pool, under one role)."""
    series: dict[str, list[list[tuple[int, float]]]] = {}
    for stage, result in results.items():
        for point in result.get("history", []):
            if "loss" in point:
                curves = series.setdefault(f"{stage}: {point['role']}", [[]])
                if curves[-1] and point["step"] <= curves[-1][-1][0]:
                    curves.append([])
                curves[-1].append((point["step"], point["loss"]))
    return series


def _loss_chart(results) -> Chart | None:
    """One panel per stage and model: PRM, SFT and PPO losses live on different scales."""
    series = loss_curves(results)
    if not series:
        return None
    figure, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (label, curves) in zip(axes[0], series.items()):
        for number, points in enumerate(curves, 1):
            ax.plot(*zip(*points), label=f"training {number}" if len(curves) > 1 else None)
        if len(curves) > 1:
            ax.legend()
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
    return Chart("Training loss", "One panel per stage and trained model, each on its own scale; a stage that "
                                  "trains a model twice draws two curves (sft: the selection, then the whole "
                                  "pool). A curve that falls and flattens has converged; one still falling at the "
                                  "end has room for more epochs; a rise means the learning rate is too high.",
                 _png(figure))


def _accuracy_chart(results) -> Chart | None:
    bars = {f"{stage}: {key}": value for stage, result in results.items()
            for key, value in result["metrics"].items()
            if isinstance(value, float) and ("accuracy" in key or "@" in key)}
    if not bars:
        return None
    figure, ax = plt.subplots(figsize=(8, 0.32 * len(bars) + 1))
    ax.barh(list(bars), list(bars.values()), color="tab:green")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (fraction of problems right)")
    ax.invert_yaxis()
    return Chart("Accuracy at the end of each stage", "Held-out accuracy before and after training, and each "
                 "eval method per benchmark (pass@1: greedy answer; majority@k: vote of k samples; rm@k: the "
                 "sample the PRM scores best; pgts: the PGTS policy's search). The 95% intervals are in the "
                 "table above: bars closer than those intervals do not differ.", _png(figure))


def _curves_chart(results, quantity: str) -> Chart | None:
    """Accuracy (or reward) against the training step, where a stage logged it more than once. Search
    parallelism, recorded beside accuracy, has its own chart and scale."""
    curves = {}
    for stage, result in results.items():
        for point in result.get("history", []):
            if point.get("step") is None or quantity not in point or point.get("metric") == "parallelism":
                continue
            label = f"{stage} {point.get('benchmark', '')} {point.get('metric', point.get('role', ''))}".strip()
            curves.setdefault(label, []).append((point["step"], point[quantity]))
    curves = {label: points for label, points in curves.items() if len(points) > 1}
    if not curves:
        return None
    figure, ax = plt.subplots(figsize=(7, 3.5))
    for label, points in curves.items():
        ax.plot(*zip(*points), label=label)
    ax.set_xlabel("step / iteration")
    ax.set_ylabel(quantity)
    ax.legend()
    if quantity == "accuracy":
        return Chart("Accuracy during training", "Accuracy on the stage's own problems as training goes on "
                     "(for RL, the rollouts' accuracy): a rising line is learning; compare its end with the "
                     "held-out figures above.", _png(figure))
    return Chart("Reward during RL", "Mean reward of each RL iteration's rollouts (PRM score plus the answer "
                 "bonus): it should rise; a flat line means the policy is not learning from the reward.",
                 _png(figure))


def _against_flops(results, quantity: str) -> Chart | None:
    """The RL stage's rollout accuracy or search parallelism against the FLOPs it had spent: raw
    points and a moving average, as the research plots them."""
    points = [(point["flops"], point[quantity]) for point in (results.get("rl") or {}).get("history", [])
              if quantity in point and point.get("flops") and point.get("metric", "train") == "train"]
    if len(points) < 2:
        return None
    flops_spent, values = zip(*points)
    window = max(1, len(values) // 5)
    smoothed = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                for i in range(len(values))]
    figure, ax = plt.subplots(figsize=(7, 3.5))
    ax.scatter(flops_spent, values, s=12, alpha=0.5, label="each iteration")
    ax.plot(flops_spent, smoothed, color="black", label=f"moving average ({window})")
    ax.set_xlabel("RL FLOPs spent")
    ax.set_ylabel("rollout accuracy" if quantity == "accuracy" else "average parallelism")
    ax.legend()
    if quantity == "accuracy":
        return Chart("Rollout accuracy against RL FLOPs", "Accuracy of each RL iteration's rollouts against the "
                     "compute spent so far (generation, scoring and updates): the return on RL compute.",
                     _png(figure))
    return Chart("Average parallelism against RL FLOPs", "Branches the PGTS search explores per problem, against "
                 "the compute spent so far: a policy that learns to branch less (or more) shows it here.",
                 _png(figure))


def _held_out_during_rl(runs: dict[str, dict[str, dict]]) -> Chart | None:
    """Held-out accuracy of each benchmark (and their average) during RL against the RL FLOPs spent: one
    panel per method (GRPO: pass@1 and rm@k; PGTS: pgts), one line per benchmark and run."""
    panels: dict[str, dict[str, list]] = {}
    for name, results in runs.items():
        for point in ((results.get("rl") or {}).get("details") or {}).get("evaluations") or []:
            scores = {benchmark: found for benchmark, found in point.items() if isinstance(found, dict)}
            methods = {method for found in scores.values() for method in found if method != "parallelism"}
            for method in methods:
                values = {benchmark: found[method] for benchmark, found in scores.items() if method in found}
                if len(values) > 1:
                    values["average"] = sum(values.values()) / len(values)
                for benchmark, value in values.items():
                    label = benchmark if len(runs) == 1 else f"{name}: {benchmark}"
                    panels.setdefault(method, {}).setdefault(label, []).append((point["flops"], value))
    panels = {method: lines for method, lines in panels.items() if any(len(points) > 1 for points in lines.values())}
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (method, lines) in zip(axes[0], sorted(panels.items())):
        for label, points in lines.items():
            ax.plot(*zip(*points), marker="o", label=label)
        ax.set_title(method)
        ax.set_xlabel("RL FLOPs spent")
        ax.set_ylabel("held-out accuracy")
        ax.legend(fontsize="small")
    return Chart("Held-out accuracy during RL", "Accuracy on held-out problems of each benchmark (and their "
                 "average) at the start of RL, every evalEvery iterations and at the end, against the compute "
                 "spent so far: rm@k is the PRM's pick of k samples, pass@1 the greedy answer, pgts the search. "
                 "A line that rises is RL paying off on problems it never trained on; one line per run when "
                 "comparing runs (model sizes, say).", _png(figure))


def _cost_against_flops(results) -> Chart | None:
    """Memory held and step time against the FLOPs a training stage had spent, its first half of steps
    against its second: what a stage costs early and late."""
    stages = {}
    for stage, result in results.items():
        for point in result.get("history", []):
            if "step_seconds" in point and point.get("flops"):
                stages.setdefault(f"{stage} ({point['role']})", []).append(point)
    stages = {label: points for label, points in stages.items() if len(points) >= 4}  # steps, not one-off passes
    if not stages:
        return None
    figure, (memory, seconds) = plt.subplots(1, 2, figsize=(10, 3.5))
    for number, (stage, points) in enumerate(stages.items()):
        color = f"C{number}"
        half = len(points) // 2
        for part, marker, chosen in (("early", "o", points[:half]), ("late", "^", points[half:])):
            flops_spent = [point["flops"] for point in chosen]
            memory.scatter(flops_spent, [point["memory_gib"] for point in chosen], color=color, marker=marker, s=14,
                           label=f"{stage}, {part}")
            seconds.scatter(flops_spent, [point["step_seconds"] for point in chosen], color=color, marker=marker,
                            s=14, label=f"{stage}, {part}")
    memory.set_ylabel("memory held (GiB)")
    seconds.set_ylabel("seconds per step")
    for ax in (memory, seconds):
        ax.set_xlabel("FLOPs spent in the stage")
        ax.legend(fontsize="small")
    return Chart("Memory and step time against FLOPs", "Each point is one step of a stage's model (circles: its "
                 "first half, triangles: its second): the memory it held (per GPU: tensors; on CPU: the process) "
                 "and how long the step took, against the FLOPs the stage had spent. Memory that climbs late "
                 "means growing sequences or caches; steps that slow late mean longer rollouts.", _png(figure))


def _pool_against_selected(runs: dict[str, dict[str, dict]]) -> Chart | None:
    """SFT on the PRM's selection against SFT on the whole pool (sft.compareWithPool): training time and
    held-out accuracy side by side."""
    rows = {}
    for name, results in runs.items():
        details = ((results.get("sft") or {}).get("details") or {})
        if "whole_pool" in details and "generator" in details:
            rows[name] = (details["generator"], details["whole_pool"])
    if not rows:
        return None
    figure, (seconds, accuracy) = plt.subplots(1, 2, figsize=(10, 0.6 * len(rows) + 2.6))
    labels = []
    for number, (name, (selected, whole)) in enumerate(rows.items()):
        for offset, (part, found, color) in enumerate((("selected", selected, "tab:green"),
                                                       ("whole pool", whole, "tab:gray"))):
            row = number * 2 + offset
            labels.append(f"{part} ({found['examples']} traces)" if len(rows) == 1 else f"{name}: {part}")
            seconds.barh(row, found["seconds"], color=color)
            accuracy.barh(row, found["held_out_accuracy_after"], color=color)
        accuracy.axvline(selected["held_out_accuracy_before"], color="black", linestyle="--",
                         label="before SFT" if number == 0 else None)
    for ax in (seconds, accuracy):
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
    seconds.set_xlabel("SFT seconds")
    accuracy.set_xlabel("held-out accuracy after SFT (greedy)")
    accuracy.set_xlim(0, 1)
    accuracy.legend(fontsize="small")
    return Chart("SFT on the selected subset against the whole pool", "The same SFT recipe from the same "
                 "starting model, on the traces the PRM kept and on every trace of the pool: what selection "
                 "saves in training time and what it does to held-out accuracy (the dashed line is before SFT). "
                 "The research's claim is both at once: several times cheaper and no less accurate.",
                 _png(figure))


def _time_chart(results) -> Chart:
    figure, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(results), [result["durationSeconds"] for result in results.values()], color="tab:blue")
    ax.set_ylabel("seconds")
    return Chart("Time per stage", "Wall time of each stage, model loading and checkpoints included.",
                 _png(figure))


def _memory_chart(results) -> Chart:
    figure, ax = plt.subplots(figsize=(6, 3))
    peaks = {stage: max(result.get("peakMemoryBytes", {"-": 0}).values()) / 2**30 for stage, result in results.items()}
    planned = {stage: (result.get("plan") or {}).get("memory_gib") for stage, result in results.items()}
    ax.bar(list(peaks), list(peaks.values()), color="tab:orange", label="measured peak")
    ax.scatter([stage for stage in planned if planned[stage]], [value for value in planned.values() if value],
               color="black", marker="_", s=400, label="planned")
    ax.set_ylabel("GiB")
    ax.legend()
    return Chart("Peak memory per stage", "Bars: the most memory the stage held (per GPU: tensors; on CPU: the "
                 "process's resident memory). Black marks: the planner's estimate the stage was sized by.",
                 _png(figure))


def _histogram_chart(result: dict | None) -> Chart | None:
    if not result or "histogram" not in result.get("details", {}):
        return None
    histogram = result["details"]["histogram"]
    edges = histogram["edges"]
    width = edges[1] - edges[0]
    figure, ax = plt.subplots(figsize=(6, 3))
    ax.bar(edges[:-1], histogram["pool"], width=width, align="edge", alpha=0.5, label="pool")
    ax.bar(edges[:-1], histogram["kept"], width=width, align="edge", alpha=0.8, label="kept")
    ax.set_xlabel("PRM trace score")
    ax.set_ylabel("traces")
    ax.legend()
    return Chart("Select: PRM scores of the trace pool", "How the PRM scored every trace of the pool, and which "
                 "were kept for SFT: the kept ones should sit at the high end. A pool whose scores bunch "
                 "together means the PRM cannot tell traces apart.", _png(figure))


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
