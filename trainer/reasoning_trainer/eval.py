"""Evaluation on GSM8K-format benchmarks: pass@1 (greedy), majority@k, RM@k and PGTS.

Recipe per benchmark: greedy solutions -> pass@1; k sampled solutions per problem ->
majority@k (most common final answer) and RM@k (the solution whose weakest step the PRM
scores highest); pass@k (any of the k right) is reported as the ceiling RM@k could reach;
pgts: tree search steered by the policy the rl stage trained (its most likely actions).
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from . import models, prm
from .checkpoints import StopRequest, is_complete
from .data.problems import Problem, answers_match, split_solution
from .data.sources import load_problems
from .generation import solve
from .intervals import wilson
from .job import StageJob
from .rl import pgts
from .rl.policy import TreePolicy
from .rl.search import SearchModels, timed_search
from .metrics import StageMetrics
from .stage_result import StageResult

RM_AGGREGATE = "min"
PGTS_SEED = 2_000_003
# Sampling is seeded per benchmark: the same models give the same figures, run after run.
SAMPLING_SEED = 1_000_003


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    evaluation = job.spec.stages.eval
    tokenizer = models.load_tokenizer(job, "generator")
    generator = models.load_generator(job, "eval")
    uses_prm = "rm@k" in evaluation.methods or "pgts" in evaluation.methods
    reward_model = models.load_reward_model(job, "eval") if uses_prm else None
    prm_tokenizer = models.load_tokenizer(job, "rewardModel") if uses_prm else None
    searcher = _searcher(job, generator, tokenizer, reward_model, prm_tokenizer) \
        if "pgts" in evaluation.methods else None
    result = StageResult(checkpoint=models.source(job, "generator"))
    benchmarks = job.spec.data.eval
    for number, benchmark in enumerate(benchmarks):
        problems = load_problems(benchmark, f"spec.data.eval[{number}]")
        started = time.monotonic()
        scores = score_benchmark(job, generator, tokenizer, reward_model, prm_tokenizer, problems, searcher)
        for method, value in scores.items():
            metrics.accuracy(benchmark.name, method, value)
            result.metrics[f"{benchmark.name}/{method}"] = value
        metrics.step("generator", time.monotonic() - started, 0, number + 1)
        metrics.progress((number + 1) / len(benchmarks))
        intervals = {method: list(wilson(round(value * len(problems)), len(problems)))
                     for method, value in scores.items()}
        result.details[benchmark.name] = {"problems": len(problems), **scores, "ci95": intervals}
    first = benchmarks[0].name if benchmarks else None
    result.accuracy = result.metrics.get(f"{first}/pass@1")
    return result


def score_benchmark(job: StageJob, generator, tokenizer, reward_model, prm_tokenizer,
                    problems: list[Problem], searcher=None) -> dict[str, float]:
    evaluation, generation = job.spec.stages.eval, job.spec.models.generator.generation
    separator = job.spec.step_separator
    questions = [problem.question for problem in problems]

    def sample(count: int, temperature: float) -> list[list[str]]:
        return solve(generator, tokenizer, questions, samples=count, max_new_tokens=evaluation.max_new_tokens,
                     max_prompt_tokens=generation.max_prompt_tokens, temperature=temperature,
                     top_p=generation.top_p, batch_size=evaluation.batch_size,
                     instruction=generation.instruction)

    scores = {}
    torch.manual_seed(SAMPLING_SEED)
    if "pass@1" in evaluation.methods:
        greedy = [split_solution(texts[0], separator) for texts in sample(1, 0.0)]
        scores["pass@1"] = _share(answers_match(answer, p.answer) for (_, answer), p in zip(greedy, problems))
    if any(method in evaluation.methods for method in ("rm@k", "majority@k")):
        samples = [[split_solution(text, separator) for text in texts]
                   for texts in sample(evaluation.k, evaluation.temperature)]
        scores["pass@k"] = _share(any(answers_match(a, p.answer) for _, a in s) for s, p in zip(samples, problems))
        if "majority@k" in evaluation.methods:
            scores["majority@k"] = _share(answers_match(majority(s), p.answer) for s, p in zip(samples, problems))
        if "rm@k" in evaluation.methods:
            picks = best_by_prm(job, reward_model, prm_tokenizer, questions, samples)
            scores["rm@k"] = _share(answers_match(a, p.answer) for a, p in zip(picks, problems))
    if searcher is not None:
        seeds = [PGTS_SEED + number for number in range(len(problems))]
        episodes, _ = timed_search(searcher, pgts.planned_limits(job), problems, seeds, greedy_actions=True)
        scores["pgts"] = _share(episode.correct for episode in episodes)
    return scores


def _searcher(job: StageJob, generator, tokenizer, reward_model, prm_tokenizer) -> SearchModels:
    """The search the rl stage trained, on this stage's models; its limits come from stages.rl.pgts."""
    folder = job.paths.model("policy")
    if not is_complete(folder):
        raise ValueError(f"spec.stages.eval.methods: pgts needs the policy the rl stage trains, and {folder} "
                         f"has none; enable stages.rl with algorithm: pgts, or remove pgts from methods")
    generation = job.spec.models.generator.generation
    policy = TreePolicy.load(folder, models.device_for(job, "eval", "policy"))
    return SearchModels(generator, tokenizer, reward_model, prm_tokenizer, policy, job.spec.step_separator,
                        generation.max_new_tokens, generation.max_prompt_tokens, generation.instruction)


def majority(solutions: list[tuple[list[str], str | None]]) -> str | None:
    """The most common final answer (numerically equal answers count together; first seen wins ties)."""
    answers = [answer for _, answer in solutions if answer is not None]
    if not answers:
        return None
    return Counter(answers).most_common(1)[0][0]


def best_by_prm(job: StageJob, reward_model, tokenizer, questions: list[str],
                samples: list[list[tuple[list[str], str | None]]]) -> list[str | None]:
    """For each problem, the final answer of the sample the PRM trusts most."""
    flat = [(question, prm.prm_steps(steps, answer or "")) for question, solutions in zip(questions, samples)
            for steps, answer in solutions]
    step_scores = prm.score(reward_model, tokenizer, flat, job.spec.step_separator,
                            job.spec.stages.eval.batch_size, max_tokens=4096)
    picks, cursor = [], 0
    for solutions in samples:
        trace_scores = [prm.aggregate(s, RM_AGGREGATE) for s in step_scores[cursor:cursor + len(solutions)]]
        cursor += len(solutions)
        best = max(range(len(solutions)), key=trace_scores.__getitem__)
        picks.append(solutions[best][1])
    return picks


def _share(hits) -> float:
    hits = list(hits)
    return sum(hits) / len(hits) if hits else float("nan")
