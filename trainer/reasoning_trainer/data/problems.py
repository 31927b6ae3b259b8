"""One reasoning problem and its step-by-step solutions, in the GSM8K format.

GSM8K answers are lines of reasoning ending ``#### N``. A solution here is the list of those
lines (the steps) plus the final answer; ``solution_text`` joins the steps with the reward
model's step separator so that generator output and PRM input share one format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

FINAL_MARK = "####"
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: 2*3=<<2*3=6>>6
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the final numeric answer, as written
    steps: tuple[str, ...] = ()  # a reference solution's reasoning steps
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Trace:
    """A solution to a problem with per-step labels (None where unknown)."""

    problem: Problem
    steps: tuple[str, ...]
    answer: str
    labels: tuple[bool, ...] | None = None

    @property
    def correct(self) -> bool:
        return answers_match(self.answer, self.problem.answer)


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


def split_solution(text: str, separator: str) -> tuple[list[str], str | None]:
    """(steps, final answer) of generated text; the answer is None when the text gives none."""
    body, marked, final = text.partition(FINAL_MARK)
    steps = [step.strip() for step in body.split(separator) if step.strip()]
    if marked:
        return steps, extract_number(final)
    return steps, extract_number(steps[-1], last=True) if steps else None


def extract_number(text: str, last: bool = False) -> str | None:
    """The first (or last) number in text, normalised: '1,234' -> '1234', '$5.50' -> '5.5', '-3/4' -> '-3/4'."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    value = parse_number(matches[-1] if last else matches[0])
    return None if value is None else format_number(value)


def parse_number(text: str) -> Fraction | None:
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        if "/" in cleaned:
            numerator, denominator = cleaned.split("/")
            return Fraction(int(numerator), int(denominator))
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    decimal = f"{float(value):.12g}"
    return decimal if Fraction(decimal) == value else f"{value.numerator}/{value.denominator}"


def answers_match(predicted: str | None, expected: str) -> bool:
    """Numeric equality: '1,000' == '1000', '0.5' == '1/2', '-3' == '-3.0'."""
    if predicted is None:
        return False
    left, right = parse_number(predicted), parse_number(expected)
    return left is not None and left == right


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
