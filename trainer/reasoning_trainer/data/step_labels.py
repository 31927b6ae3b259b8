"""Labelled steps read from a dataset (data.stepLabels): solutions whose every step is marked right or
wrong, in one of the three formats PRM training data is published in.

- ``trl``: ``prompt``, ``completions`` (the steps) and ``labels`` (one boolean per step), TRL's stepwise
  supervision format (trl-lib/math_shepherd, trl-lib/prm800k);
- ``math-shepherd``: ``input`` is the question and the steps, each followed by the tag ``ки``; ``label``
  is the same text with the tag replaced by ``+`` (right) or ``-`` (wrong) (peiyi9979/Math-Shepherd);
- ``prm800k``: OpenAI's JSONL, ``question.problem`` and ``label.steps``, each with rated
  ``completions`` (1 good, 0 neutral, -1 bad) and the ``chosen_completion``: a step is right unless
  rated -1, and the solution ends at its first bad step (what follows was never rated against it).

The answer of such a solution is stated inside its last step, so the PRM scores the steps as they
are, with no separate answer line.
"""

from __future__ import annotations

import re

from .problems import Problem, Trace

MATH_SHEPHERD_TAG = "ки"
_STEP_PREFIX = re.compile(r"^Step \d+:\s*")


class StepLabelError(ValueError):
    """A record that does not have the named format's fields."""


def traces(records: list[dict], format_name: str, field: str) -> list[Trace]:
    read = {"trl": _trl, "math-shepherd": _math_shepherd, "prm800k": _prm800k}[format_name]
    found = []
    for index, record in enumerate(records):
        try:
            trace = read(record)
        except (KeyError, TypeError, IndexError) as error:
            raise StepLabelError(f"{field}: record {index} is not in {format_name} format ({error!r} missing or "
                                 f"malformed); see docs/trainer.md for the three formats") from None
        if trace is not None:
            found.append(trace)
    return found


def _labelled(question: str, steps: list[str], labels: list[bool]) -> Trace | None:
    if not steps or len(steps) != len(labels):
        return None
    return Trace(Problem(question.strip(), "", answer_format="boxed"), tuple(steps), "", tuple(labels))


def _trl(record: dict) -> Trace | None:
    steps = [str(step).strip() for step in record["completions"]]
    return _labelled(record["prompt"], steps, [bool(label) for label in record["labels"]])


def _math_shepherd(record: dict) -> Trace | None:
    text, marked = record["input"], record["label"]
    pieces = text.split(MATH_SHEPHERD_TAG)
    first_step = re.search(r"Step 1:", pieces[0])
    if len(pieces) < 2 or first_step is None:
        return None
    pieces[0] = pieces[0][first_step.start():]
    question = text[:first_step.start()]
    steps, labels, offset = [], [], first_step.start()
    for number, piece in enumerate(pieces[:-1]):
        offset += len(piece)
        # The label text has '+' or '-' where the input has the tag: each earlier tag became one character.
        labels.append(marked[offset + number: offset + number + 1] == "+")
        steps.append(_STEP_PREFIX.sub("", piece.strip()))
    return _labelled(question, steps, labels)


def _prm800k(record: dict) -> Trace | None:
    steps, labels = [], []
    for step in record["label"]["steps"]:
        chosen = step.get("chosen_completion")
        completions = step["completions"] or []
        if chosen is None and step.get("human_completion"):
            taken = step["human_completion"]
        elif completions:
            taken = completions[chosen if chosen is not None else 0]
        else:
            break
        steps.append(str(taken["text"]).strip())
        good = (taken.get("rating") if taken.get("rating") is not None else 1) >= 0
        labels.append(good)
        if not good:
            break
    return _labelled(record["question"]["problem"], steps, labels)
