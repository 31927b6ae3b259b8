"""report.html for a local run: loss and accuracy against step, time and memory per stage,
the select stage's score histogram. PNG charts (matplotlib, no display needed)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def write_report(run: str, results: dict[str, dict], target: Path) -> Path:
    folder = target.parent / "charts"
    folder.mkdir(parents=True, exist_ok=True)
    charts = [chart for chart in (
        _loss_chart(results, folder / "loss.png"),
        _accuracy_chart(results, folder / "accuracy.png"),
        _time_chart(results, folder / "time.png"),
        _memory_chart(results, folder / "memory.png"),
        _histogram_chart(results.get("select"), folder / "select-scores.png"),
    ) if chart is not None]
    body = [f"<h1>Run {html.escape(run)}</h1>", _results_table(results), _intervals_table(results)]
    body += [f'<figure><img src="charts/{chart.name}" alt="{chart.stem}"><figcaption>{chart.stem}</figcaption></figure>'
             for chart in charts]
    target.write_text("<!doctype html><meta charset=utf-8><title>reasoning-operator run "
                      f"{html.escape(run)}</title><style>body{{font-family:sans-serif;max-width:980px}}"
                      "td,th{padding:4px 10px;text-align:left}img{max-width:100%}</style>" + "\n".join(body))
    return target


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


def _loss_chart(results, path: Path) -> Path | None:
    series = {}
    for stage, result in results.items():
        for point in result.get("history", []):
            if "loss" in point:
                series.setdefault(f"{stage} {point['role']}", []).append((point["step"], point["loss"]))
    return _lines(series, "step", "loss", "Training loss", path)


def _accuracy_chart(results, path: Path) -> Path | None:
    """Final accuracies as bars; accuracy and reward against step where a stage logged several."""
    curves = {}
    for stage, result in results.items():
        for point in result.get("history", []):
            if point.get("step") is None:
                continue
            if "accuracy" in point:
                label = f"{stage} {point['benchmark']} {point['metric']}"
                curves.setdefault(label, []).append((point["step"], point["accuracy"]))
            elif "reward" in point:
                curves.setdefault(f"{stage} reward", []).append((point["step"], point["reward"]))
    curves = {label: points for label, points in curves.items() if len(points) > 1}
    bars = {f"{stage}: {key}": value for stage, result in results.items()
            for key, value in result["metrics"].items()
            if isinstance(value, float) and ("accuracy" in key or "@" in key)}
    if not curves and not bars:
        return None
    figure, axes = plt.subplots(1, 2 if curves and bars else 1, figsize=(12, 4.5), squeeze=False)
    axes = list(axes[0])
    if bars:
        ax = axes.pop(0)
        ax.barh(list(bars), list(bars.values()), color="tab:green")
        ax.set_xlim(0, 1)
        ax.set_title("Accuracy")
    if curves:
        ax = axes.pop(0)
        for label, points in curves.items():
            ax.plot(*zip(*points), label=label)
        ax.set_xlabel("step / iteration")
        ax.set_title("Accuracy and reward against step")
        ax.legend()
    return _save(figure, path)


def _time_chart(results, path: Path) -> Path:
    figure, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(results), [result["durationSeconds"] for result in results.values()], color="tab:blue")
    ax.set_ylabel("seconds")
    ax.set_title("Time per stage")
    return _save(figure, path)


def _memory_chart(results, path: Path) -> Path:
    figure, ax = plt.subplots(figsize=(6, 3))
    peaks = {stage: max(result.get("peakMemoryBytes", {"-": 0}).values()) / 2**30 for stage, result in results.items()}
    ax.bar(list(peaks), list(peaks.values()), color="tab:orange")
    ax.set_ylabel("GiB (peak)")
    ax.set_title("Peak memory per stage")
    return _save(figure, path)


def _histogram_chart(result: dict | None, path: Path) -> Path | None:
    if not result or "histogram" not in result.get("details", {}):
        return None
    histogram = result["details"]["histogram"]
    edges = histogram["edges"]
    width = edges[1] - edges[0]
    figure, ax = plt.subplots(figsize=(6, 3))
    ax.bar(edges[:-1], histogram["pool"], width=width, align="edge", alpha=0.5, label="pool")
    ax.bar(edges[:-1], histogram["kept"], width=width, align="edge", alpha=0.8, label="kept")
    ax.set_xlabel("PRM trace score")
    ax.set_title("Select: PRM scores of the pool")
    ax.legend()
    return _save(figure, path)


def _lines(series: dict, xlabel: str, ylabel: str, title: str, path: Path) -> Path | None:
    if not series:
        return None
    figure, ax = plt.subplots(figsize=(7, 3.5))
    for label, points in series.items():
        ax.plot(*zip(*points), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
