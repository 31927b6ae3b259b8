"""A deterministic generator of GSM8K-format arithmetic word problems (no download needed).

Problems chain one to three additions and subtractions of numbers up to 5 with counts that
stay within 0..20: a few hundred facts, which the tiny embedded model learns on a CPU in
minutes. Every solution step is one equation. The select stage's raw trace pool mixes
correct and corrupted solutions (problems.corrupt).
"""

from __future__ import annotations

import random
import zlib

from .problems import Problem, Trace, corrupt, reference_trace

NAMES = ("Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Amy", "Tom", "Kai")
ITEMS = ("apples", "books", "coins", "cards", "shells", "stamps", "pens", "rocks", "eggs", "toys")
# (verb phrase, operator) pairs; {n} is the operand.
ACTIONS = (
    ("finds {n} more", "+"),
    ("buys {n} more", "+"),
    ("gets {n} more", "+"),
    ("gives away {n}", "-"),
    ("loses {n}", "-"),
    ("sells {n}", "-"),
)
MAX_VALUE, MAX_OPERAND = 9, 4


def problems(size: int, seed: int, split: str = "train") -> list[Problem]:
    """``size`` problems; the same (seed, split) always gives the same problems, and the test
    split's questions never appear in the train split."""
    rng = random.Random(seed * 7919 + zlib.crc32(split.encode()))
    made, seen = [], set()
    while len(made) < size:
        problem = _problem(rng)
        if (split == "train") != _is_train_question(problem.question):
            continue
        if problem.question in seen:
            continue
        seen.add(problem.question)
        made.append(problem)
    return made


def _is_train_question(question: str) -> bool:
    # A stable hash splits the question space: about one question in five is held out.
    return zlib.crc32(question.encode()) % 5 != 0


def _problem(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, MAX_VALUE)
    sentences, steps = [f"{name} has {value} {item}."], []
    for _ in range(rng.randint(1, 3)):
        allowed = [a for a in ACTIONS if (a[1] == "+" and value < MAX_VALUE) or (a[1] == "-" and value > 0)]
        phrase, op = rng.choice(allowed)
        operand = _operand(rng, op, value)
        result = _apply(op, value, operand)
        sentences.append(f"Then {name} {phrase.format(n=operand)}.")
        steps.append(f"{value} {op} {operand} = {result}")
        value = result
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), str(value), tuple(steps))


def _operand(rng: random.Random, op: str, value: int) -> int:
    if op == "-":
        return rng.randint(1, min(value, MAX_OPERAND))
    return rng.randint(1, min(MAX_VALUE - value, MAX_OPERAND))


def _apply(op: str, left: int, right: int) -> int:
    return left + right if op == "+" else left - right


def trace_pool(size: int, seed: int, corrupted_share: float = 0.4) -> list[Trace]:
    """A raw pool of reasoning traces, ``corrupted_share`` of them with a wrong step."""
    rng = random.Random(seed + 17)
    return [corrupt(reference_trace(problem), rng) if rng.random() < corrupted_share else reference_trace(problem)
            for problem in problems(size, seed)]
