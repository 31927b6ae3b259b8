"""Evaluation: pass@1 (greedy), majority@k, RM@k and PGTS on each benchmark, and their average.

Recipe per benchmark (its answer format and prompt from the benchmark registry): greedy solutions
-> pass@1; k sampled solutions per problem -> majority@k (most common final answer) and RM@k (the
solution the PRM scores highest, its steps' scores aggregated per rmAggregate: by default its
weakest step); pass@k (any of the k right) is reported as the ceiling RM@k could reach; pgts: tree
search steered by the policy the rl stage trained (its most likely actions). With several
benchmarks, ``average/<method>`` is the mean over those that ran it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import torch

from . import flops, models, prm
from .checkpoints import StopRequest, is_complete
from .data.answers import FORMATS
from .data.problems import Problem, split_solution
from .data.sources import benchmark_instruction, load_problems
from .generation import prompt_ids, solve
from .intervals import wilson
from .job import StageJob
from .rl import pgts
from .rl.policy import TreePolicy
from .rl.search import SearchModels, timed_search
from .schema.stages import EvalSpec
from .metrics import StageMetrics
from .stage_result import StageResult

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
        instruction = benchmark_instruction(benchmark, job.spec.models.generator.generation.instruction)
        cost: dict = {}
        scores = score_benchmark(job, generator, tokenizer, reward_model, prm_tokenizer, problems, searcher,
                                 instruction, metrics=metrics,
                                 progress=lambda share: metrics.progress((number + share) / len(benchmarks)),
                                 cost=cost)
        for method, value in scores.items():
            metrics.accuracy(benchmark.name, method, value)
            result.metrics[f"{benchmark.name}/{method}"] = value
        metrics.step("generator", time.monotonic() - started, 0, number + 1)
        intervals = {method: list(wilson(round(value * len(problems)), len(problems)))
                     for method, value in scores.items()}
        result.details[benchmark.name] = {"problems": len(problems), "answerFormat": problems[0].answer_format
                                          if problems else None, **scores, "ci95": intervals,
                                          **({"cost": cost} if cost else {})}
    first = benchmarks[0].name if benchmarks else None
    result.accuracy = result.metrics.get(f"{first}/pass@1")
    if len(benchmarks) > 1:
        average = averages({benchmark.name: result.details[benchmark.name] for benchmark in benchmarks})
        for method, value in average.items():
            metrics.accuracy("average", method, value)
            result.metrics[f"average/{method}"] = value
        result.details["average"] = average
        result.accuracy = average.get("pass@1", result.accuracy)
    return result


def averages(per_benchmark: dict[str, dict]) -> dict[str, float]:
    """Each method's mean over the benchmarks that scored it (each benchmark weighs the same, as the
    research's tables average them)."""
    methods = {key for scores in per_benchmark.values() for key, value in scores.items() if isinstance(value, float)}
    found = {}
    for method in sorted(methods):
        values = [scores[method] for scores in per_benchmark.values() if isinstance(scores.get(method), float)]
        found[method] = sum(values) / len(values)
    return found


def score_benchmark(job: StageJob, generator, tokenizer, reward_model, prm_tokenizer,
                    problems: list[Problem], searcher=None, instruction: str | None = None,
                    evaluation: EvalSpec | None = None, metrics: StageMetrics | None = None,
                    progress: Callable[[float], None] | None = None, cost: dict | None = None) -> dict[str, float]:
    """The methods of ``evaluation`` (the eval stage's settings by default) on one benchmark's problems;
    with ``metrics``, the FLOPs they spend (generation, the PRM's scoring, the search) go there,
    ``progress`` hears the share of the benchmark done after each of its parts, and ``cost`` gets the
    tokens per problem that greedy decoding and the search generate and the search's parallelism."""
    evaluation = evaluation or job.spec.stages.eval
    sampled = any(method in evaluation.methods for method in ("rm@k", "majority@k"))
    parts = [part for part, runs in (("pass@1", "pass@1" in evaluation.methods), ("samples", sampled),
                                     ("rm@k", "rm@k" in evaluation.methods), ("pgts", searcher is not None)) if runs]

    def finished(part: str) -> None:
        if progress is not None:
            progress((parts.index(part) + 1) / len(parts))
    generation = job.spec.models.generator.generation
    separator = job.spec.step_separator
    questions = [problem.question for problem in problems]
    instruction = generation.instruction if instruction is None else instruction

    def sample(count: int, temperature: float) -> tuple[list[list[tuple[list[str], str | None]]], list[int]]:
        """Each problem's solutions, and the tokens generated for each solution (counted only where
        the FLOPs or the cost are asked for)."""
        texts = solve(generator, tokenizer, questions, samples=count, max_new_tokens=evaluation.max_new_tokens,
                      max_prompt_tokens=generation.max_prompt_tokens, temperature=temperature,
                      top_p=generation.top_p, batch_size=evaluation.batch_size, instruction=instruction)
        counted = metrics is not None or cost is not None
        generated = [len(tokenizer(text, add_special_tokens=False)["input_ids"])
                     for outputs in texts for text in outputs] if counted else []
        if metrics is not None:
            _count_generation(metrics, generator, tokenizer, questions, instruction, generated)
        return [[split_solution(text, separator, problem.answer_format) for text in outputs]
                for outputs, problem in zip(texts, problems)], generated

    scores = {}
    torch.manual_seed(SAMPLING_SEED)
    if "pass@1" in evaluation.methods:
        solutions, generated = sample(1, 0.0)
        greedy = [solution[0] for solution in solutions]
        scores["pass@1"] = _share(p.solved_by(answer) for (_, answer), p in zip(greedy, problems))
        if cost is not None and problems:
            cost["greedyTokensPerProblem"] = sum(generated) / len(problems)
        finished("pass@1")
    if sampled:
        samples, _ = sample(evaluation.k, evaluation.temperature)
        finished("samples")
        scores["pass@k"] = _share(any(p.solved_by(a) for _, a in s) for s, p in zip(samples, problems))
        if "majority@k" in evaluation.methods:
            scores["majority@k"] = _share(p.solved_by(majority(s, p.answer_format)) for s, p in zip(samples, problems))
        if "rm@k" in evaluation.methods:
            picks = best_by_prm(job, reward_model, prm_tokenizer, problems, samples, evaluation.batch_size,
                                evaluation.rm_aggregate, metrics)
            scores["rm@k"] = _share(p.solved_by(a) for a, p in zip(picks, problems))
            finished("rm@k")
    if searcher is not None:
        seeds = [PGTS_SEED + number for number in range(len(problems))]
        episodes, found = timed_search(searcher, pgts.planned_limits(job), problems, seeds, greedy_actions=True)
        scores["pgts"] = _share(episode.correct for episode in episodes)
        if cost is not None:
            cost.update(pgtsTokensPerProblem=found.tokens_per_problem, pgtsParallelism=found.parallelism)
        if metrics is not None:  # each step's tokens, generated and scored, attending to at most its tree
            tokens = sum(episode.tokens for episode in episodes)
            for role, model in (("generator", searcher.generator), ("rewardModel", searcher.reward_model)):
                metrics.flops(role, flops.forward(flops.Shape.of(model), tokens, found.tokens_per_problem))
        finished("pgts")
    return scores


def _count_generation(metrics: StageMetrics, generator, tokenizer, questions: list[str], instruction: str,
                      generated: list[int]) -> None:
    """FLOPs of generating solutions of ``generated`` tokens each after the questions' prompts."""
    prompts = [len(prompt_ids(tokenizer, question, instruction)) for question in questions]
    if generated:
        metrics.flops("generator", flops.generation(flops.Shape.of(generator), len(generated),
                                                    sum(prompts) / len(prompts), sum(generated) / len(generated)))


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


def majority(solutions: list[tuple[list[str], str | None]], answer_format: str = "gsm8k") -> str | None:
    """The most common final answer (answers with the same vote key count together: 0.5 and 1/2 are one
    number; the first seen wins ties)."""
    answers = [answer for _, answer in solutions if answer is not None]
    if not answers:
        return None
    key = FORMATS[answer_format].vote_key
    counts = Counter(key(answer) for answer in answers)
    best = max(counts.values())
    return next(answer for answer in answers if counts[key(answer)] == best)


def best_by_prm(job: StageJob, reward_model, tokenizer, problems: list[Problem],
                samples: list[list[tuple[list[str], str | None]]], batch_size: int,
                how: str = "min", metrics: StageMetrics | None = None) -> list[str | None]:
    """For each problem, the final answer of the sample the PRM trusts most."""
    flat = [(problem.question, prm.prm_steps(steps, answer or "", problem.answer_format))
            for problem, solutions in zip(problems, samples) for steps, answer in solutions]
    step_scores = prm.score(reward_model, tokenizer, flat, job.spec.step_separator, batch_size, max_tokens=4096)
    if metrics is not None and flat:
        separator = job.spec.step_separator
        lengths = [len(tokenizer(question + separator.join(steps))["input_ids"]) for question, steps in flat]
        metrics.flops("rewardModel", sum(flops.forward(flops.Shape.of(reward_model), length, length / 2)
                                         for length in lengths))
    picks, cursor = [], 0
    for solutions in samples:
        trace_scores = [prm.aggregate(s, how) for s in step_scores[cursor:cursor + len(solutions)]]
        cursor += len(solutions)
        best = max(range(len(solutions)), key=trace_scores.__getitem__)
        picks.append(solutions[best][1])
    return picks


def _share(hits) -> float:
    hits = list(hits)
    return sum(hits) / len(hits) if hits else float("nan")
