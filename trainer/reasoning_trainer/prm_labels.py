"""Step labels from the generator's own mistakes: Monte-Carlo estimation as in Math-Shepherd.

Sample solutions to training problems from the trained generator; from the prefix ending at each
step, sample ``completions`` continuations. A step is right when at least one continuation reaches
the reference answer (Math-Shepherd's hard estimation); the share that do is kept as its soft
label. The final answer line is right when the solution's answer is. A prefix that no
continuation could rescue makes every later step of that solution wrong without more sampling.
Identical prefixes (every correct solution of a problem shares its first steps) are sampled once.

Synthetic labels (a reference solution with one number changed) teach a PRM to spot that edit;
these teach it the errors the generator it will judge actually makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .data.problems import Problem, Trace, split_solution
from .generation import continue_prompts, prompt_ids, solve


@dataclass(frozen=True)
class Sampling:
    samples: int
    completions: int
    max_new_tokens: int
    max_prompt_tokens: int
    temperature: float
    top_p: float
    batch_size: int
    instruction: str = ""


# Told of every generate call: (sequences, mean prompt tokens, mean generated tokens), for FLOPs.
Generated = Callable[[int, float, float], None]


def monte_carlo_traces(generator, tokenizer, problems: list[Problem], separator: str, sampling: Sampling,
                       seed: int, generated: Generated | None = None,
                       shares_of_right_solutions: bool = True) -> tuple[list[Trace], list[list[float]]]:
    """The generator's solutions with hard step labels, and each step's soft label (share). Without
    ``shares_of_right_solutions``, the prefixes of a solution that reaches the answer are not sampled:
    they are right (the solution itself is a continuation that reaches it), and their share reads 1.0."""
    torch.manual_seed(seed)
    solutions = solve(generator, tokenizer, [p.question for p in problems], sampling.samples,
                      sampling.max_new_tokens, sampling.max_prompt_tokens, sampling.temperature, sampling.top_p,
                      sampling.batch_size, sampling.instruction)
    if generated is not None and problems:
        prompts = [prompt_ids(tokenizer, p.question, sampling.instruction) for p in problems]
        _tell(generated, tokenizer, [prompt for prompt in prompts for _ in range(sampling.samples)], solutions)
    drafts = []
    for problem, texts in zip(problems, solutions):
        for text in texts:
            steps, answer = split_solution(text, separator, problem.answer_format)
            if steps and answer is not None:
                drafts.append((problem, tuple(steps), answer))
    known = {} if shares_of_right_solutions else {
        (problem.question, steps[:depth]): 1.0 for problem, steps, answer in drafts if problem.solved_by(answer)
        for depth in range(1, len(steps) + 1)}
    shares = _prefix_shares(generator, tokenizer, drafts, separator, sampling, generated, known)
    traces, soft = [], []
    for problem, steps, answer in drafts:
        step_shares = [shares.get((problem.question, steps[:depth]), 0.0) for depth in range(1, len(steps) + 1)]
        traces.append(Trace(problem, steps, answer, tuple(share > 0 for share in step_shares)))
        soft.append(step_shares)
    return traces, soft


def _tell(generated: Generated, tokenizer, prompts: list[list[int]], outputs: list[list[str]]) -> None:
    texts = [text for texts in outputs for text in texts]
    if texts:
        lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        generated(len(texts), sum(map(len, prompts)) / len(prompts), sum(lengths) / len(lengths))


def _prefix_shares(generator, tokenizer, drafts, separator: str, sampling: Sampling,
                   generated: Generated | None = None, known: dict | None = None) -> dict:
    """(question, steps so far) -> share of continuations reaching the answer, depth by depth;
    a prefix after one with share 0 is not sampled (it stays absent, read as 0), nor one ``known``."""
    shares: dict[tuple[str, tuple[str, ...]], float] = dict(known or {})
    depth, alive = 1, drafts
    while alive:
        wanted = {}
        for problem, steps, _ in alive:
            key = (problem.question, steps[:depth])
            if key not in shares:
                wanted[key] = problem
        keys = list(wanted)
        # The prefix stops before its last separator: the generator writes that one itself. Text
        # ending in a separator tokenizes differently (one merged token) from how the generator
        # writes it mid-solution, and every continuation would start off-distribution.
        prompts = [prompt_ids(tokenizer, question, sampling.instruction)[-sampling.max_prompt_tokens:]
                   + tokenizer(separator.join(prefix), add_special_tokens=False)["input_ids"]
                   for question, prefix in keys]
        continued = continue_prompts(generator, tokenizer, prompts, sampling.completions, sampling.max_new_tokens,
                                     sampling.temperature, sampling.top_p, sampling.batch_size) if prompts else []
        if generated is not None and prompts:
            _tell(generated, tokenizer, [prompt for prompt in prompts for _ in range(sampling.completions)], continued)
        for key, texts in zip(keys, continued):
            problem = wanted[key]
            reached = [problem.solved_by(split_solution(text, separator, problem.answer_format)[1])
                       for text in texts]
            shares[key] = sum(reached) / len(reached)
        depth += 1
        alive = [draft for draft in alive if len(draft[1]) >= depth and shares[(draft[0].question, draft[1][:depth - 1])] > 0]
    return shares


def position_baseline(train: list[list[bool]], validation: list[list[bool]]) -> list[list[float]]:
    """The best a scorer can do that sees only where a step is: the training share of right steps at
    each position (the last known one beyond), as validation scores. A PRM must beat it."""
    by_position: dict[int, list[bool]] = {}
    for labels in train:
        for position, label in enumerate(labels):
            by_position.setdefault(position, []).append(label)
    rates = {position: sum(values) / len(values) for position, values in by_position.items()}
    deepest = max(rates) if rates else 0
    return [[rates.get(min(position, deepest), 0.5) for position in range(len(labels))] for labels in validation]
