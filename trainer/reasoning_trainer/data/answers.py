"""How a benchmark states its final answer, and when a model's answer counts as right.

Three formats cover the benchmarks the research reports:
- ``gsm8k``: the solution ends ``#### N``; numbers compare by value ('1,000' == '1000', '0.5' == '1/2');
- ``boxed``: the answer is the last ``\\boxed{...}`` (MATH500, Minerva Math, Gaokao2023-En, OlympiadBench,
  College Math); answers compare by mathematical equivalence with math-verify (Hugging Face's checker,
  which parses LaTeX into sympy: '\\frac{1}{2}' == '0.5', '\\sqrt{2}' == '2^{1/2}');
- ``choice``: a letter (MMLU-STEM), boxed or written as 'the answer is (C)'.

Each format says what answer a text states explicitly, what answer a whole solution gives (None when it
gives none), whether two answers agree, and the key majority voting groups answers by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

FINAL_MARK = "####"
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)
CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    stated: Callable[[str], str | None]  # the answer a text states explicitly (a step that ends the search)
    final: Callable[[str], str | None]  # the answer a whole solution gives (gsm8k falls back to the last number)
    same: Callable[[str | None, str], bool]  # predicted, expected
    vote_key: Callable[[str], str]  # answers with one key are one vote


# gsm8k ------------------------------------------------------------------------------------------

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


def _gsm8k_stated(text: str) -> str | None:
    _, marked, final = text.partition(FINAL_MARK)
    return extract_number(final) if marked else None


def _gsm8k_final(text: str) -> str | None:
    return _gsm8k_stated(text) if FINAL_MARK in text else extract_number(text, last=True)


# boxed ------------------------------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces kept), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    opening = text.find("{", start)
    if opening < 0:
        return None
    depth = 0
    for index in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[opening + 1:index].strip()
    return None


def _boxed_same(predicted: str | None, expected: str) -> bool:
    if predicted is None:
        return False
    if _plain(predicted) == _plain(expected):
        return True
    from math_verify import parse, verify  # sympy is slow to import: only where boxed answers are graded

    gold, guess = parse(f"${expected}$"), parse(f"${predicted}$")
    return bool(gold and guess and verify(gold, guess))


def _plain(answer: str) -> str:
    return re.sub(r"\s+|\\[,;! ]|\\left|\\right|\$", "", answer).replace("\\dfrac", "\\frac").replace(
        "\\tfrac", "\\frac").rstrip(".")


# choice -----------------------------------------------------------------------------------------

def _choice_final(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None and (letter := _LETTER.fullmatch(boxed.strip())):
        return letter.group(1)
    if stated := _ANSWER_IS.findall(text):
        return stated[-1].upper()
    return None


def _choice_same(predicted: str | None, expected: str) -> bool:
    return predicted is not None and predicted.strip().upper() == expected.strip().upper()


FORMATS: dict[str, AnswerFormat] = {
    "gsm8k": AnswerFormat("gsm8k", _gsm8k_stated, _gsm8k_final, answers_match,
                          lambda answer: format_number(value) if (value := parse_number(answer)) is not None
                          else answer),
    "boxed": AnswerFormat("boxed", last_boxed, last_boxed, _boxed_same, _plain),
    "choice": AnswerFormat("choice", _choice_final, _choice_final, _choice_same, lambda answer: answer.strip().upper()),
}


def choice_letter(answer: object) -> str:
    """A multiple-choice key as a letter: 2 -> 'C', 'c' -> 'C'."""
    if isinstance(answer, int) and 0 <= answer < len(CHOICE_LETTERS):
        return CHOICE_LETTERS[answer]
    text = str(answer).strip().upper()
    if text.isdigit() and int(text) < len(CHOICE_LETTERS):
        return CHOICE_LETTERS[int(text)]
    return text
