"""The PRM's step labels, from the sources stages.sft.prmLabels names, and the held-out samples it is
judged on.

- ``montecarlo``: the generator's own solutions to training problems, each step labelled by
  Monte-Carlo estimation (prm_labels.py, Math-Shepherd); the generator is the one this stage has
  (select: before any fine-tuning; sft: the one sft just trained), the model whose mistakes the PRM
  will have to find;
- ``synthetic``: reference solutions and copies with one step's number changed (that step and every
  later one wrong);
- ``dataset``: labelled steps from data.stepLabels (data/step_labels.py).

Validation is what the PRM is for: other problems' solutions sampled from the same generator (the
first eval benchmark's, never trained on). Their labels are exact where the task knows each step's
truth (the embedded task: its step chain is unique, data/embedded.py), else Monte-Carlo labels drawn
the same way as the training ones. Without a generator (a PRM-only run), synthetic labels of held-out
training problems stand in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch

from . import flops, models
from .data import embedded, step_labels
from .data.problems import Problem, Trace, corrupt, reference_trace, split_solution
from .data.sources import load_problems, read_records
from .generation import solve
from .job import StageJob
from .metrics import StageMetrics
from .prm_labels import Sampling, monte_carlo_traces

VALIDATION_PROBLEMS, VALIDATION_SAMPLES, VALIDATION_SEED = 200, 2, 4_000_037
SYNTHETIC_VALIDATION_SHARE = 0.1


@dataclass
class Labelled:
    train: list[Trace]
    validation: list[Trace]
    validation_kind: str  # exact, montecarlo or synthetic
    counts: dict[str, int] = field(default_factory=dict)


def gather(job: StageJob, stage: str, metrics: StageMetrics) -> Labelled:
    sft = job.spec.stages.sft
    problems = load_problems(job.spec.data.train, "spec.data.train")
    if sft.max_examples:
        problems = problems[: sft.max_examples]
    generator = tokenizer = None
    if job.spec.models.generator is not None:
        generator, tokenizer = models.load_generator(job, stage), models.load_tokenizer(job, "generator")
    # Without a generator to sample held-out solutions from, some training problems are held out instead.
    held_out = [] if generator else problems[: max(1, int(len(problems) * SYNTHETIC_VALIDATION_SHARE))]
    problems = problems[len(held_out):]
    train, counts = [], {}
    if "montecarlo" in sft.prm_labels:
        found = monte_carlo(job, stage, generator, tokenizer, problems[: sft.monte_carlo.problems], seed=0,
                            metrics=metrics)
        train += found
        counts.update(montecarlo_traces=len(found), montecarlo_traces_with_a_wrong_step=_wrong(found))
    if "synthetic" in sft.prm_labels:
        found = synthetic(problems, sft.incorrect_per_problem, seed=0)
        train += found
        counts["synthetic_traces"] = len(found)
    if "dataset" in sft.prm_labels:
        found = from_dataset(job)
        train += found
        counts.update(dataset_traces=len(found), dataset_traces_with_a_wrong_step=_wrong(found))
    if generator is None:
        return Labelled(train, synthetic(held_out, max(sft.incorrect_per_problem, 1), seed=1), "synthetic", counts)
    validation, kind = generator_samples(job, stage, generator, tokenizer, metrics)
    del generator  # the PRM trains next, on the same device
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Labelled(train, validation, kind, counts)


def monte_carlo(job: StageJob, stage: str, generator, tokenizer, problems: list[Problem], seed: int,
                metrics: StageMetrics | None = None) -> list[Trace]:
    """Solutions sampled from the generator with Monte-Carlo hard labels and their shares (soft labels); the
    sampling's FLOPs go to ``metrics``."""
    spec, generation = job.spec.stages.sft.monte_carlo, job.spec.models.generator.generation
    sampling = Sampling(spec.samples_per_problem, spec.completions, spec.max_new_tokens, generation.max_prompt_tokens,
                        generation.temperature, generation.top_p, _sampling_batch(job, stage), generation.instruction)
    counted = None
    if metrics is not None:
        shape = flops.Shape.of(generator)
        counted = lambda sequences, prompt, new: metrics.flops(  # noqa: E731
            "generator", flops.generation(shape, sequences, prompt, new))
    traces, shares = monte_carlo_traces(generator, tokenizer, problems, job.spec.step_separator, sampling, seed,
                                        counted, shares_of_right_solutions=job.spec.stages.sft.prm_soft_labels)
    return [replace(trace, shares=tuple(share)) for trace, share in zip(traces, shares)]


def synthetic(problems: list[Problem], incorrect_per_problem: int, seed: int) -> list[Trace]:
    """Each problem's reference solution plus corrupted copies with their step labels."""
    rng = random.Random(seed)
    traces = []
    for problem in problems:
        reference = reference_trace(problem)
        traces.append(reference)
        traces += [corrupt(reference, rng) for _ in range(incorrect_per_problem)]
    return traces


def from_dataset(job: StageJob) -> list[Trace]:
    spec = job.spec.data.step_labels
    found = step_labels.traces(read_records(spec, "spec.data.stepLabels"), spec.format, "spec.data.stepLabels")
    return found[: spec.limit] if spec.limit else found


def generator_samples(job: StageJob, stage: str, generator, tokenizer,
                      metrics: StageMetrics | None = None) -> tuple[list[Trace], str]:
    """Held-out solutions of the generator with their labels: exact where the task knows each step's
    truth, else Monte-Carlo estimates."""
    benchmark = job.spec.data.eval[0] if job.spec.data.eval else job.spec.data.train
    problems = load_problems(benchmark, "spec.data.eval[0]" if job.spec.data.eval else "spec.data.train")
    problems = problems[:VALIDATION_PROBLEMS] if job.spec.data.eval else problems[-VALIDATION_PROBLEMS:]
    exact = benchmark.source == "embedded" and not getattr(benchmark, "benchmark", None)
    if not exact:
        return monte_carlo(job, stage, generator, tokenizer, problems, seed=VALIDATION_SEED, metrics=metrics), \
            "montecarlo"
    generation = job.spec.models.generator.generation
    torch.manual_seed(VALIDATION_SEED)
    texts = solve(generator, tokenizer, [p.question for p in problems], VALIDATION_SAMPLES,
                  job.spec.stages.sft.monte_carlo.max_new_tokens, generation.max_prompt_tokens, generation.temperature,
                  generation.top_p, _sampling_batch(job, stage), generation.instruction)
    traces = []
    for problem, outputs in zip(problems, texts):
        for text in outputs:
            steps, answer = split_solution(text, job.spec.step_separator, problem.answer_format)
            if steps and answer is not None:
                traces.append(Trace(problem, tuple(steps), answer, embedded.step_labels(problem, steps)))
    return traces, "exact"


def _sampling_batch(job: StageJob, stage: str) -> int:
    """Sequences sampled at once: the planner's choice for this stage, else the eval stage's batch."""
    evaluation = job.spec.stages.eval
    return job.stage_plan(stage).get("sampling_batch") or (evaluation.batch_size if evaluation else 32)


def _wrong(traces: list[Trace]) -> int:
    return sum(not all(trace.labels) for trace in traces)
