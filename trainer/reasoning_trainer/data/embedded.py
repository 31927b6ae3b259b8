"""A deterministic generator of GSM8K-format arithmetic word problems (no download needed).

A problem chains one to four additions and subtractions (operands 1-5, counts within 0-15), one
equation per step. The splits are honest on two counts. A problem's composition is its sequence of
actions (finds, sells, gives away, ...), and one composition of two or more steps in four is held
out; so is one step chain (the sequence of equations) in four, since two compositions can give the
same equations (finds and buys both add). The held-out ones are halved between two splits: ``test``
(what eval scores) and ``dev`` (what the embedded base's pretraining stops on, pretrain.py). A
test or dev problem has both its composition and its chain held out for that split, train problems
(and every other split) neither: no test problem repeats a composition or step chain of training or
of dev. Test and dev problems take two to four steps. Holding out operation sequences (+ - -) instead was measured:
the model then fails the unseen patterns the same way every time. Held-out chain lengths or number ranges were tried and rejected: a tiny
model then fails them the same way every time (pass@4 equal to pass@1), which leaves search,
selection and RL nothing to win; the held-out compositions at these lengths leave it uncertain
(bench/RESULTS.md). The select stage's pool is sampled from the generator (select.py); the
synthetic pool here (correct and corrupted reference solutions) remains for offline tests.
"""

from __future__ import annotations

import random
import zlib

from .problems import Problem, Trace, corrupt, reference_trace

NAMES = ("Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Amy", "Tom", "Kai")
ITEMS = ("apples", "books", "coins", "cards", "shells", "stamps", "pens", "rocks", "eggs", "toys")
# (verb phrase, operator) pairs; {n} is the operand. A phrase's first word names its action.
ACTIONS = (
    ("finds {n} more", "+"),
    ("buys {n} more", "+"),
    ("gets {n} more", "+"),
    ("gives away {n}", "-"),
    ("loses {n}", "-"),
    ("sells {n}", "-"),
)
MAX_VALUE, MAX_OPERAND = 15, 5
TRAIN_STEPS, TEST_STEPS = (1, 2, 3, 4), (2, 3, 4)
HELD_OUT_ONE_IN = 4
HELD_OUT_SPLITS = ("test", "dev")


def problems(size: int, seed: int, split: str = "train") -> list[Problem]:
    """``size`` problems; the same (seed, split) always gives the same problems. Test and dev problems
    use only their own held-out compositions and step chains, train problems (and every other split)
    none."""
    rng = random.Random(seed * 7919 + zlib.crc32(split.encode()))
    wanted = split if split in HELD_OUT_SPLITS else "train"
    lengths = TEST_STEPS if wanted in HELD_OUT_SPLITS else TRAIN_STEPS
    made, seen = [], set()
    while len(made) < size:
        problem = _problem(rng, lengths)
        if split_of(problem) != wanted or problem.question in seen:
            continue
        seen.add(problem.question)
        made.append(problem)
    return made


def split_of(problem: Problem) -> str | None:
    """``test`` or ``dev`` when the problem's composition and step chain are both held out for that
    split, ``train`` when neither is held out; None (in no split) otherwise."""
    composition = _held_out_for("|".join(problem.meta["composition"]), len(problem.steps))
    chain = _held_out_for("chain:" + "|".join(problem.steps), len(problem.steps))
    if composition is None and chain is None:
        return "train"
    return composition if composition == chain else None


def _held_out_for(key: str, steps: int) -> str | None:
    """The held-out split a composition or chain is kept for (a stable hash: one in four of those with
    two or more steps, halved between test and dev by the hash's next bit), or None."""
    code = zlib.crc32(key.encode())
    if steps < 2 or code % HELD_OUT_ONE_IN:
        return None
    return HELD_OUT_SPLITS[code // HELD_OUT_ONE_IN % len(HELD_OUT_SPLITS)]


def _problem(rng: random.Random, lengths: tuple[int, ...]) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, MAX_VALUE)
    sentences, steps, composition = [f"{name} has {value} {item}."], [], []
    for _ in range(rng.choice(lengths)):
        allowed = [a for a in ACTIONS if (a[1] == "+" and value < MAX_VALUE) or (a[1] == "-" and value > 0)]
        phrase, op = rng.choice(allowed)
        operand = _operand(rng, op, value)
        result = _apply(op, value, operand)
        sentences.append(f"Then {name} {phrase.format(n=operand)}.")
        steps.append(f"{value} {op} {operand} = {result}")
        composition.append(phrase.split()[0])
        value = result
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), str(value), tuple(steps), {"composition": tuple(composition)})


def _operand(rng: random.Random, op: str, value: int) -> int:
    if op == "-":
        return rng.randint(1, min(value, MAX_OPERAND))
    return rng.randint(1, min(MAX_VALUE - value, MAX_OPERAND))


def _apply(op: str, left: int, right: int) -> int:
    return left + right if op == "+" else left - right


def step_labels(problem: Problem, steps: tuple[str, ...] | list[str]) -> tuple[bool, ...]:
    """Which steps of a solution are right: the chain is unique, so a step is right when it and every
    step before it match the reference (Math-Shepherd's convention: after a mistake nothing can lead
    to the answer). The exact truth the Monte-Carlo labels estimate, for judging a PRM."""
    labels, right = [], True
    for index, step in enumerate(steps):
        right = right and index < len(problem.steps) and _same_step(step, problem.steps[index])
        labels.append(right)
    return tuple(labels)


def _same_step(written: str, reference: str) -> bool:
    return " ".join(written.split()) == reference


def trace_pool(size: int, seed: int, corrupted_share: float = 0.4) -> list[Trace]:
    """A synthetic pool of reasoning traces, ``corrupted_share`` of them with a wrong step."""
    rng = random.Random(seed + 17)
    return [corrupt(reference_trace(problem), rng) if rng.random() < corrupted_share else reference_trace(problem)
            for problem in problems(size, seed)]
