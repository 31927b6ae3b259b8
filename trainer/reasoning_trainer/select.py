"""PRM data selection (ReasonFlux-PRM style): score a raw pool of reasoning traces with the
process reward model and keep the best for SFT.

Recipe: (train the PRM first when this run trains it, see RunSpec.reward_model_trained_in) -> the
raw pool: the generator's own solutions to data.pool's problems (select.sample; their reference
solutions are never read), or data.pool's traces as they are (a stronger model's, say) -> score
every trace's steps in batches -> a trace's score: stepWeight x (its reasoning steps' scores,
aggregated) + trajectoryWeight x (the PRM's verdict on its final answer line, which reads the whole
trace), over the sum of the weights -> keep the top K or a fraction -> write selected.jsonl and
pool.jsonl (GSM8K format) and the score histogram. Whether a kept trace is right is never used to
choose it; it is counted afterwards (kept_correct_share) to show what the PRM chose.
"""

from __future__ import annotations

import time

import torch

from . import flops, models, prm
from .checkpoints import StopRequest, write_json
from .data.problems import Trace, split_solution
from .data.sources import load_pool, load_problems, write_traces
from .generation import prompt_ids, solve
from .job import StageJob
from .metrics import StageMetrics
from .stage_result import StageResult

HISTOGRAM_BINS = 20
POOL_SEED = 3_000_017


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    select = job.spec.stages.select
    result = StageResult()
    trains_prm = job.spec.reward_model_trained_in() == "select"
    if trains_prm:
        result.details["reward_model"] = prm.train_reward_model(job, "select", metrics, stop, (0.0, 0.6))
        result.metrics.update({f"prm_{k}": v for k, v in result.details["reward_model"]["after"].items()})

    pool, unanswered = raw_pool(job, metrics)
    if unanswered:
        result.metrics["pool_unanswered"] = unanswered
    tokenizer = models.load_tokenizer(job, "rewardModel")
    model = models.load_reward_model(job, "select")
    scores = _score_pool(job, model, tokenizer, pool, metrics, (0.6 if trains_prm else 0.3, 1.0))

    keep = select.keep_top_k if select.keep_top_k else max(1, round(len(pool) * select.keep_fraction))
    chosen = sorted(best(pool, scores, keep, select.max_per_problem))  # the pool's order: SFT sees the data as it came
    kept = [pool[index] for index in chosen]
    write_traces(job.paths.selected, kept, [scores[index] for index in chosen])
    write_traces(job.paths.pool, pool, scores)
    histogram = score_histogram(scores, [scores[index] for index in chosen])
    write_json(job.paths.stage("select") / "histogram.json", histogram)

    result.checkpoint = str(job.paths.selected)
    result.metrics.update({"pool": len(pool), "kept": len(kept),
                           "score_threshold": min(scores[index] for index in chosen)})
    result.metrics.update(_correct_shares(pool, kept))
    result.details["histogram"] = histogram
    return result


def raw_pool(job: StageJob, metrics: StageMetrics) -> tuple[list[Trace], int]:
    """The traces to choose from, and how many sampled solutions gave no final answer (left out)."""
    sample = job.spec.stages.select.sample
    spec, field = (job.spec.data.pool, "spec.data.pool") if job.spec.data.pool else (job.spec.data.train,
                                                                                      "spec.data.train")
    if sample is None:
        return load_pool(spec, field), 0
    problems = load_problems(spec, field)
    generator, tokenizer = models.load_generator(job, "select"), models.load_tokenizer(job, "generator")
    generation = job.spec.models.generator.generation
    started = time.monotonic()
    torch.manual_seed(POOL_SEED)
    batch = (job.stage_plan("select").get("sampling_batch")
             or job.spec.stages.select.batch_size * sample.samples_per_problem)
    texts = solve(generator, tokenizer, [p.question for p in problems], sample.samples_per_problem,
                  sample.max_new_tokens, generation.max_prompt_tokens, sample.temperature, sample.top_p, batch,
                  generation.instruction)
    pool, unanswered = [], 0
    for problem, outputs in zip(problems, texts):
        for text in outputs:
            steps, answer = split_solution(text, job.spec.step_separator, problem.answer_format)
            if steps and answer is not None:
                pool.append(Trace(problem, tuple(steps), answer))
            else:
                unanswered += 1
    sequences = len(problems) * sample.samples_per_problem
    prompt = sum(len(prompt_ids(tokenizer, p.question, generation.instruction)) for p in problems) / len(problems)
    completion = sum(len(tokenizer(text).input_ids) for outputs in texts for text in outputs) / sequences
    metrics.flops("generator", flops.generation(flops.Shape.of(generator), sequences, prompt, completion))
    metrics.step("generator", time.monotonic() - started, int(completion * sequences), 1)
    del generator  # the PRM scores next, on the same device
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return pool, unanswered


def _score_pool(job: StageJob, model, tokenizer, pool: list[Trace], metrics: StageMetrics,
                span: tuple[float, float]) -> list[float]:
    select = job.spec.stages.select
    batch = job.stage_plan("select").get("batch_size") if job.spec.reward_model_trained_in() != "select" else None
    batch = batch or select.batch_size
    scores, shape = [], flops.Shape.of(model)
    for start in range(0, len(pool), batch):
        chunk = pool[start:start + batch]
        started = time.monotonic()
        texts = [(t.problem.question, prm.prm_steps(t.steps, t.answer, t.problem.answer_format)) for t in chunk]
        step_scores = prm.score(model, tokenizer, texts, job.spec.step_separator, batch, select.max_seq_length)
        separator = job.spec.step_separator
        lengths = [min(len(tokenizer(question + separator.join(steps)).input_ids), select.max_seq_length)
                   for question, steps in texts]
        metrics.flops("rewardModel", sum(flops.forward(shape, length, length / 2) for length in lengths))
        scores += [trace_score(s, select.aggregate, select.step_weight, select.trajectory_weight)
                   for s in step_scores]
        metrics.step("rewardModel", time.monotonic() - started, sum(lengths), start // batch + 1)
        metrics.progress(span[0] + (span[1] - span[0]) * len(scores) / len(pool))
    return scores


def best(pool: list[Trace], scores: list[float], keep: int, per_problem: int | None) -> list[int]:
    """Indices of the ``keep`` best-scored traces, at most ``per_problem`` of any one problem."""
    taken: dict[str, int] = {}
    chosen = []
    for index in sorted(range(len(pool)), key=lambda i: scores[i], reverse=True):
        question = pool[index].problem.question
        if per_problem is not None and taken.get(question, 0) >= per_problem:
            continue
        taken[question] = taken.get(question, 0) + 1
        chosen.append(index)
        if len(chosen) == keep:
            break
    return chosen


def trace_score(scores: list[float], aggregate: str, step_weight: float, trajectory_weight: float) -> float:
    """Step-level reward (the reasoning steps, aggregated) and trajectory-level reward (the last
    score: the final answer line) combined with their weights."""
    if not scores:
        return 0.0
    steps = prm.aggregate(scores[:-1], aggregate) if len(scores) > 1 else scores[-1]
    return (step_weight * steps + trajectory_weight * scores[-1]) / (step_weight + trajectory_weight)


def score_histogram(all_scores: list[float], kept_scores: list[float]) -> dict:
    edges = [index / HISTOGRAM_BINS for index in range(HISTOGRAM_BINS + 1)]

    def counts(values):
        bins = [0] * HISTOGRAM_BINS
        for value in values:
            bins[min(int(value * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        return bins

    return {"edges": edges, "pool": counts(all_scores), "kept": counts(kept_scores)}


def _correct_shares(pool: list[Trace], kept: list[Trace]) -> dict[str, float]:
    """Share of traces whose final answer is right, before and after selection."""
    return {"pool_correct_share": sum(t.correct for t in pool) / len(pool),
            "kept_correct_share": sum(t.correct for t in kept) / len(kept)}
