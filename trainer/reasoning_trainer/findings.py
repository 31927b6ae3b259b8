"""What a run shows against what the research behind each stage claims, in words with the figures.

Each claim is checked only where the run has its data: the PRM beats a scorer that sees only a
step's position; SFT on the PRM's selection is no less accurate than on the whole pool, in less
time; the PRM's pick of k samples beats greedy decoding and the majority vote; PGTS beats greedy
decoding; GRPO raises held-out accuracy. A claim the run does not bear out is said so, first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    holds: bool
    text: str


def findings(results: dict[str, dict]) -> list[Finding]:
    """The run's checks, the ones it does not bear out first."""
    found = [*_reward_model(results.get("select")), *_selection(results.get("sft")), *_grpo(results.get("rl")),
             *_decoding(results.get("eval"))]
    return sorted(found, key=lambda finding: finding.holds)


def _reward_model(select: dict | None) -> list[Finding]:
    metrics = (select or {}).get("metrics") or {}
    if "prm_step_auroc" not in metrics or "prm_position_baseline_step_auroc" not in metrics:
        return []
    prm, baseline = metrics["prm_step_auroc"], metrics["prm_position_baseline_step_auroc"]
    how = "better" if prm > baseline else "no better"
    return [Finding(prm > baseline, f"The PRM ranks held-out steps {how} than their position alone: step AUROC "
                                    f"{prm:.3f} against {baseline:.3f} for a position-only scorer"
                                    f"{' (0.5 is chance)' if prm <= 0.5 else ''}.")]


def _selection(sft: dict | None) -> list[Finding]:
    details = (sft or {}).get("details") or {}
    if "generator" not in details or "whole_pool" not in details:
        return []
    selected, whole = details["generator"], details["whole_pool"]
    accurate = selected["held_out_accuracy_after"] >= whole["held_out_accuracy_after"]
    cheaper = selected["seconds"] < whole["seconds"]
    return [Finding(accurate and cheaper,
                    f"SFT on the PRM's selection ({selected['examples']} traces) reaches "
                    f"{selected['held_out_accuracy_after']:.1%} held-out in {selected['seconds']:.0f} s; on the "
                    f"whole pool ({whole['examples']} traces), {whole['held_out_accuracy_after']:.1%} in "
                    f"{whole['seconds']:.0f} s ({selected['seconds'] / max(whole['seconds'], 1e-9):.2f}x the time).")]


def _grpo(rl: dict | None) -> list[Finding]:
    if not rl or (rl.get("details") or {}).get("algorithm") != "grpo":
        return []
    metrics = rl.get("metrics") or {}
    if "held_out_accuracy_before" not in metrics or "held_out_accuracy_after" not in metrics:
        return []
    before, after = metrics["held_out_accuracy_before"], metrics["held_out_accuracy_after"]
    return [Finding(after > before, f"GRPO moves held-out pass@1 from {before:.1%} to {after:.1%}.")]


def _decoding(evaluation: dict | None) -> list[Finding]:
    found = []
    for benchmark, scores in ((evaluation or {}).get("details") or {}).items():
        if not isinstance(scores, dict) or "pass@1" not in scores:
            continue
        intervals = scores.get("ci95", {})

        def against(method: str, others: list[str]) -> Finding:
            beaten = [other for other in others if other in scores]
            holds = all(scores[method] > scores[other] for other in beaten)
            figures = " and ".join(f"{other} {scores[other]:.1%}" for other in beaten)
            overlap = any(_overlap(intervals.get(method), intervals.get(other)) for other in beaten)
            return Finding(holds, f"{benchmark}: {method} {scores[method]:.1%} against {figures}"
                                  f"{' (their 95% intervals overlap)' if overlap else ''}.")
        if "rm@k" in scores:
            found.append(against("rm@k", ["pass@1", "majority@k"]))
        if "pgts" in scores:
            found.append(_with_search_cost(against("pgts", ["pass@1"]), scores.get("cost") or {}))
    return found


def _with_search_cost(finding: Finding, cost: dict) -> Finding:
    """The search's price next to its accuracy: its tokens per problem against greedy decoding's."""
    search, greedy = cost.get("pgtsTokensPerProblem"), cost.get("greedyTokensPerProblem")
    if not search or not greedy:
        return finding
    return Finding(finding.holds, f"{finding.text[:-1]}, at {search / greedy:.2f}x the tokens of greedy decoding "
                                  f"({search:.1f} per problem against {greedy:.1f}), parallelism "
                                  f"{cost.get('pgtsParallelism', 0.0):.2f}.")


def _overlap(one: list[float] | None, other: list[float] | None) -> bool:
    return bool(one and other) and one[0] <= other[1] and other[0] <= one[1]
