"""One reasoning problem and its step-by-step solutions.

Training data is in the GSM8K format: lines of reasoning ending ``#### N``. A solution here is the
list of those lines (the steps) plus the final answer; ``solution_text`` joins the steps with the
reward model's step separator so that generator output and PRM input share one format. A
benchmark's answers may be stated otherwise (boxed LaTeX, a letter): ``Problem.answer_format``
names how, and data/answers.py reads and compares them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

from .answers import FINAL_MARK, FORMATS, format_number, parse_number

_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: 2*3=<<2*3=6>>6
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the final answer, as the benchmark writes it
    steps: tuple[str, ...] = ()  # a reference solution's reasoning steps
    meta: dict = field(default_factory=dict, compare=False)
    answer_format: str = "gsm8k"  # how answers are stated and compared (data/answers.py)

    def solved_by(self, answer: str | None) -> bool:
        """Whether a model's final answer is this problem's (by value, by equivalence, or the letter)."""
        return FORMATS[self.answer_format].same(answer, self.answer)


@dataclass(frozen=True)
class Trace:
    """A solution to a problem with per-step labels (None where unknown)."""

    problem: Problem
    steps: tuple[str, ...]
    answer: str
    labels: tuple[bool, ...] | None = None
    shares: tuple[float, ...] | None = None  # soft labels: each step's share of continuations that reached the answer

    @property
    def correct(self) -> bool:
        return self.problem.solved_by(self.answer)


def parse_gsm8k(question: str, answer_text: str, **meta) -> Problem:
    """A Problem from a GSM8K record (``answer`` is the reasoning ending ``#### N``)."""
    body, _, final = answer_text.rpartition(FINAL_MARK)
    if not _:
        raise ValueError(f"answer has no '{FINAL_MARK} <number>' line: {answer_text[-80:]!r}")
    steps = tuple(line.strip() for line in _CALCULATOR.sub("", body).splitlines() if line.strip())
    return Problem(question.strip(), final.strip(), steps, meta)


def solution_text(steps: tuple[str, ...] | list[str], answer: str, separator: str) -> str:
    """What the generator is taught to write: steps, each ended by the separator, then the answer."""
    return "".join(step + separator for step in steps) + f"{FINAL_MARK} {answer}"


def split_solution(text: str, separator: str, answer_format: str = "gsm8k") -> tuple[list[str], str | None]:
    """(steps, final answer) of generated text; the answer is None when the text gives none. The
    ``#### N`` line is no step; a boxed answer stays inside the step that states it."""
    body = text.partition(FINAL_MARK)[0] if answer_format == "gsm8k" else text
    steps = [step.strip() for step in body.split(separator) if step.strip()]
    return steps, FORMATS[answer_format].final(text)


def corrupt(trace: Trace, rng) -> Trace:
    """The trace with one step's result changed: that step and every later one are labelled
    incorrect (the PRM's step-label rule), and the final answer is off by the same amount."""
    candidates = [index for index, step in enumerate(trace.steps) if _NUMBER.search(step)]
    if not candidates:
        raise ValueError(f"no step with a number to corrupt in {trace.problem.question[:60]!r}")
    wrong_at = rng.choice(candidates)
    delta = rng.choice((-3, -2, -1, 1, 2, 3))
    steps = list(trace.steps)
    steps[wrong_at] = _shift_last_number(steps[wrong_at], delta)
    answer = format_number((parse_number(trace.answer) or Fraction(0)) + delta)
    labels = tuple(index < wrong_at for index in range(len(steps)))
    return Trace(trace.problem, tuple(steps), answer, labels)


def _shift_last_number(step: str, delta: int) -> str:
    match = list(_NUMBER.finditer(step))[-1]
    value = parse_number(match.group())
    shifted = format_number(value + delta) if value is not None else match.group()
    return step[: match.start()] + shifted + step[match.end():]


def reference_trace(problem: Problem) -> Trace:
    return Trace(problem, problem.steps, problem.answer, tuple(True for _ in problem.steps))
