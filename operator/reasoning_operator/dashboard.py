"""The Grafana dashboard of runs, stages and GPUs, built with grafana-foundation-sdk.

``make dashboard`` writes it into the chart (``charts/reasoning-operator/dashboards/``), which
ships it as a ConfigMap for Grafana's sidecar; a test fails when the committed copy drifts, and
the Prometheus test runs every query below against a live server. Metric names come from the
trainer's and the operator's metric modules, so a renamed metric breaks the build, not the
dashboard.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.bargauge import Panel as BarGauge
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimeline
from grafana_foundation_sdk.builders.timeseries import Panel as TimeSeries
from grafana_foundation_sdk.builders.trend import Panel as Trend
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync, DataSourceRef, DataTransformerConfig, VariableRefresh,
)

from reasoning_trainer.metrics import GPU_METRICS, METRICS

from .metrics import METRICS as OPERATOR_METRICS

TARGET = Path("charts/reasoning-operator/dashboards/reasoning-operator.json")
UID = "reasoning-operator"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every trainer series carries these labels; the variables narrow them.
RUN = 'namespace=~"$namespace", run=~"$run"'
STAGE = f'{RUN}, stage=~"$stage"'
# dcgm-exporter labels GPU series with the pod using the GPU; stage pods are named <run>-<stage>-<suffix>.
DCGM_POD = 'namespace=~"$namespace", pod=~"($run)-($stage)-.*"'
BY_STAGE = "namespace, run, stage"


def metric(name: str) -> str:
    """A known metric name (a typo here fails the build, not a panel)."""
    known = {*METRICS, *GPU_METRICS, *OPERATOR_METRICS, "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
    base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    if name not in known and base not in known:
        raise KeyError(f"{name} is not a metric the trainer, the operator or dcgm-exporter exports")
    return name


def quantile(q: float, name: str, by: str) -> str:
    return (f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric(name + '_bucket')}{{{STAGE}}}[$__rate_interval])))")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def queries() -> dict[str, dict[str, list[Query]]]:
    """Row title -> panel title -> queries; the layout and the Prometheus test both read it."""
    gpu_legend = "{{run}} {{stage}} {{device}}"
    return {
        "Runs": {
            "Runs by phase": [Query(f"sum by (phase) ({metric('rto_operator_runs')})", "{{phase}}")],
            "Stage progress": [Query(f"max by ({BY_STAGE}) ({metric('rto_stage_progress_ratio')}{{{STAGE}}})",
                                     "{{run}} {{stage}}")],
            "Stage transitions": [Query(
                f"sum by (run, stage, phase) (increase({metric('rto_operator_stage_transitions_total')}"
                f"{{{STAGE}}}[$__rate_interval]))", "{{run}} {{stage}} {{phase}}")],
            "Operator errors and reconcile latency": [
                Query(f"sum by (error) (rate({metric('rto_operator_reconcile_errors_total')}[$__rate_interval]))",
                      "errors/s {{error}}"),
                Query(f"histogram_quantile(0.95, sum by (le, handler) "
                      f"(rate({metric('rto_operator_handler_duration_seconds_bucket')}[$__rate_interval])))",
                      "p95 {{handler}} (s)"),
            ],
        },
        "Training": {
            "Loss": [Query(f"{metric('rto_loss')}{{{STAGE}}}", "{{run}} {{stage}} {{role}}")],
            "Reward": [Query(f"{metric('rto_reward')}{{{STAGE}}}", "{{run}} {{stage}} {{role}}")],
            # Accuracy against the stage's progress: both are ratios on one axis.
            "Accuracy during training": [
                Query(f"max by ({BY_STAGE}, benchmark) ({metric('rto_accuracy_ratio')}{{{STAGE}, metric=\"train\"}})",
                      "accuracy {{run}} {{stage}} {{benchmark}}"),
                Query(f"max by ({BY_STAGE}) ({metric('rto_stage_progress_ratio')}{{{STAGE}}})",
                      "progress {{run}} {{stage}}"),
            ],
            "Accuracy by benchmark and method": [Query(
                f"max by (run, benchmark, metric) (max_over_time({metric('rto_accuracy_ratio')}"
                f"{{{RUN}, metric!=\"train\"}}[$__range]))", "{{run}} {{benchmark}} {{metric}}")],
            "Tokens per second": [Query(
                f"sum by ({BY_STAGE}, role) (rate({metric('rto_tokens_total')}{{{STAGE}}}[$__rate_interval]))",
                "{{run}} {{stage}} {{role}}")],
            "Step time p50 / p95": [
                Query(quantile(0.5, "rto_step_duration_seconds", f"{BY_STAGE}, role"), "p50 {{run}} {{stage}} {{role}}"),
                Query(quantile(0.95, "rto_step_duration_seconds", f"{BY_STAGE}, role"), "p95 {{run}} {{stage}} {{role}}"),
            ],
        },
        # What the research plots: accuracy and search parallelism against the compute RL spent. A trend
        # panel draws its second query against its first (joined on time): pick one run.
        "Compute (FLOPs)": {
            "FLOPs spent": [Query(f"sum by ({BY_STAGE}) ({metric('rto_flops_total')}{{{STAGE}}})",
                                  "{{run}} {{stage}}")],
            "Rollout accuracy against RL FLOPs": [
                Query(f"sum({metric('rto_flops_total')}{{{RUN}, stage=\"rl\"}})", "flops"),
                Query(f"max({metric('rto_accuracy_ratio')}{{{RUN}, stage=\"rl\", benchmark=\"rollouts\"}})",
                      "rollout accuracy")],
            "Average parallelism against RL FLOPs": [
                Query(f"sum({metric('rto_flops_total')}{{{RUN}, stage=\"rl\"}})", "flops"),
                Query(f"max({metric('rto_average_parallelism')}{{{RUN}, stage=\"rl\"}})", "average parallelism")],
            "Held-out accuracy during RL": [Query(
                f"max by (run, benchmark, metric) ({metric('rto_accuracy_ratio')}"
                f"{{{RUN}, stage=\"rl\", metric=~\"pass@1|rm@k|pgts\"}})", "{{run}} {{benchmark}} {{metric}}")],
        },
        "Tree search (PGTS)": {
            "Average parallelism": [Query(f"{metric('rto_average_parallelism')}{{{STAGE}}}", "{{run}} {{stage}}")],
            "Nodes and tokens per problem": [
                Query(f"{metric('rto_search_nodes_per_problem')}{{{STAGE}}}", "nodes {{run}}"),
                Query(f"{metric('rto_search_tokens_per_problem')}{{{STAGE}}}", "tokens {{run}}"),
            ],
            "PPO losses and entropy": [
                Query(f"{metric('rto_policy_loss')}{{{STAGE}}}", "policy loss {{run}}"),
                Query(f"{metric('rto_value_loss')}{{{STAGE}}}", "value loss {{run}}"),
                Query(f"{metric('rto_policy_entropy')}{{{STAGE}}}", "entropy {{run}}"),
            ],
        },
        "GPU memory": {
            "GPU memory per GPU (trainer)": [
                Query(f"{metric('rto_gpu_memory_allocated_bytes')}{{{STAGE}}}", f"allocated {gpu_legend}"),
                Query(f"{metric('rto_gpu_memory_reserved_bytes')}{{{STAGE}}}", f"reserved {gpu_legend}"),
                Query(f"{metric('rto_gpu_memory_total_bytes')}{{{STAGE}}}", f"total {gpu_legend}"),
            ],
            "GPU memory per GPU (DCGM)": [
                Query(f"{metric('DCGM_FI_DEV_FB_USED')}{{{DCGM_POD}}} * 1048576", "used {{pod}} GPU {{gpu}}"),
                Query(f"({metric('DCGM_FI_DEV_FB_USED')}{{{DCGM_POD}}} + {metric('DCGM_FI_DEV_FB_FREE')}"
                      f"{{{DCGM_POD}}}) * 1048576", "total {{pod}} GPU {{gpu}}"),
            ],
        },
    }


UNITS = {
    "Runs by phase": "none", "Stage progress": "percentunit", "Stage transitions": "none",
    "Operator errors and reconcile latency": "short", "Loss": "none", "Reward": "none",
    "Accuracy during training": "percentunit", "Accuracy by benchmark and method": "percentunit",
    "Tokens per second": "short", "Step time p50 / p95": "s", "Average parallelism": "short",
    "Nodes and tokens per problem": "short", "PPO losses and entropy": "none",
    "GPU memory per GPU (trainer)": "bytes", "GPU memory per GPU (DCGM)": "bytes",
    "FLOPs spent": "short", "Rollout accuracy against RL FLOPs": "percentunit",
    "Average parallelism against RL FLOPs": "short", "Held-out accuracy during RL": "percentunit",
}
PANEL_KINDS = {"Runs by phase": Stat, "Stage progress": StateTimeline,
               "Accuracy by benchmark and method": BarGauge,
               "Rollout accuracy against RL FLOPs": Trend, "Average parallelism against RL FLOPs": Trend}
# A trend panel's x-axis: the legend of its first query, a field once the queries are joined on time.
JOIN_ON_TIME = DataTransformerConfig(id_val="joinByField", options={"byField": "Time", "mode": "outer"})


def _panel(number: int, title: str, panel_queries: list[Query]):
    panel = PANEL_KINDS.get(title, TimeSeries)().id(number).title(title).unit(UNITS[title]).datasource(DATASOURCE)
    panel = panel.height(8).span(24 if title == "Stage progress" else 12)
    if title in ("Stage progress", "Accuracy during training", "Accuracy by benchmark and method",
                 "Held-out accuracy during RL"):
        panel = panel.min(0).max(1)
    if PANEL_KINDS.get(title) is Trend:
        panel = panel.with_transformation(JOIN_ON_TIME).x_field(panel_queries[0].legend)
    for index, query in enumerate(panel_queries):
        target = Dataquery().ref_id(chr(ord("A") + index)).expr(query.expr).legend_format(query.legend)
        if PANEL_KINDS.get(title) in (Stat, BarGauge):
            target = target.instant()
        panel = panel.with_target(target)
    return panel


def _variable(name: str, label: str, query: str) -> QueryVariable:
    return (QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))


def build() -> dict:
    progress = metric("rto_stage_progress_ratio")
    dashboard = (
        Dashboard("Reasoning training")
        .uid(UID)
        .description("ReasoningTraining runs: stages, training curves, accuracy, tree search and GPU memory.")
        .tags(["reasoning-operator", "training", "gpu"])
        .refresh("30s")
        .time("now-6h", "now")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(_variable("namespace", "Namespace", f"label_values({progress}, namespace)"))
        .with_variable(_variable("run", "Run", f'label_values({progress}{{namespace=~"$namespace"}}, run)'))
        .with_variable(_variable("stage", "Stage", f"label_values({progress}{{{RUN}}}, stage)"))
    )
    number = 0
    for row, panels in queries().items():
        number += 1
        dashboard = dashboard.with_row(Row(row).id(number))
        for title, panel_queries in panels.items():
            number += 1
            dashboard = dashboard.with_panel(_panel(number, title, panel_queries))
    return _without_nulls(json.loads(JSONEncoder(sort_keys=True).encode(dashboard.build())))


def _without_nulls(node):
    """The SDK writes unset options as null; Grafana expects them absent to apply its defaults."""
    if isinstance(node, dict):
        return {key: _without_nulls(value) for key, value in node.items() if value is not None}
    if isinstance(node, list):
        return [_without_nulls(item) for item in node]
    return node


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Grafana dashboard into the chart")
    parser.add_argument("--root", default=".", help="repository root")
    args = parser.parse_args(argv)
    path = Path(args.root) / TARGET
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
