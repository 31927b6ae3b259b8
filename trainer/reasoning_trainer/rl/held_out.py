"""Held-out accuracy during RL: before the first update, every evalEvery iterations, and after the
last, on the first evalProblems problems of every eval benchmark (never trained on).

GRPO changes the generator, so it is scored the way the eval stage scores one (pass@1, and RM@k with
the PRM); PGTS changes only the policy that steers search over a frozen generator, so the search's
own accuracy is what moves. Each point carries the RL FLOPs spent so far, for accuracy against FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.problems import Problem
from ..data.sources import benchmark_instruction, load_problems
from ..job import StageJob
from ..metrics import StageMetrics
from ..schema.stages import EvalSpec


@dataclass
class HeldOut:
    problems: dict[str, list[Problem]]  # benchmark name -> its held-out problems
    points: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, job: StageJob) -> HeldOut:
        count = job.spec.stages.rl.eval_problems
        found = {}
        for number, benchmark in enumerate(job.spec.data.eval if count else []):
            found[benchmark.name] = load_problems(benchmark, f"spec.data.eval[{number}]")[:count]
        return cls(found)

    @property
    def first(self) -> str | None:
        return next(iter(self.problems), None)

    def due(self, job: StageJob, iteration: int) -> bool:
        """Whether the periodic evaluation runs after ``iteration`` (1-based; the last one always has it)."""
        every = job.spec.stages.rl.eval_every
        return bool(self.problems) and every is not None and iteration % every == 0 \
            and iteration != job.spec.stages.rl.iterations

    def record(self, metrics: StageMetrics, iteration: int, scores: dict[str, dict[str, float]]) -> dict:
        """One point of accuracy during RL: in the stage's history (metrics) and its results."""
        point = {"iteration": iteration, "flops": metrics.flops_total, **scores}
        for benchmark, by_method in scores.items():
            for method, value in by_method.items():
                metrics.accuracy(benchmark, method, value, step=iteration)
        self.points.append(point)
        return point


def generator_scores(job: StageJob, held_out: HeldOut, generator, tokenizer, reward_model,
                     prm_tokenizer) -> dict[str, dict[str, float]]:
    """pass@1 (and RM@k when there is a PRM) of the generator on each benchmark's held-out problems."""
    from ..eval import score_benchmark  # eval imports rl.pgts: import at call time

    methods = ["pass@1"] + (["rm@k"] if reward_model is not None else [])
    evaluation = (job.spec.stages.eval or EvalSpec()).model_copy(update={"methods": methods})
    instruction = job.spec.models.generator.generation.instruction
    benchmarks = {benchmark.name: benchmark for benchmark in job.spec.data.eval}
    was_training = generator.training
    generator.eval()
    scores = {name: score_benchmark(job, generator, tokenizer, reward_model, prm_tokenizer, problems,
                                    instruction=benchmark_instruction(benchmarks[name], instruction),
                                    evaluation=evaluation)
              for name, problems in held_out.problems.items()}
    generator.train(was_training)
    return scores
