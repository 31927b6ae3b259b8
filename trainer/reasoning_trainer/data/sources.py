"""Read a DatasetSpec: the embedded generator, a GSM8K-format JSONL file or folder, or a hub dataset."""

from __future__ import annotations

import json
from pathlib import Path

from ..schema.data import DatasetSpec
from . import embedded
from .problems import Problem, Trace, parse_gsm8k, solution_text, split_solution


class DataError(ValueError):
    """A dataset that cannot be read, with the field to fix."""


def load_problems(spec: DatasetSpec, field: str) -> list[Problem]:
    if spec.source == "embedded":
        problems = embedded.problems(spec.size, spec.seed, spec.split)
    else:
        problems = [_problem(record, field, index) for index, record in enumerate(_records(spec, field))]
    return problems[: spec.limit] if spec.limit else problems


def load_pool(spec: DatasetSpec, field: str) -> list[Trace]:
    """Reasoning traces to score; a GSM8K record's answer is its trace (labels unknown)."""
    if spec.source == "embedded":
        pool = embedded.trace_pool(spec.size, spec.seed)
    else:
        pool = [Trace(problem, problem.steps, problem.answer) for problem in load_problems(spec, field)]
    return pool[: spec.limit] if spec.limit else pool


def _problem(record: dict, field: str, index: int) -> Problem:
    try:
        return parse_gsm8k(record["question"], record["answer"])
    except KeyError as missing:
        raise DataError(f"{field}: record {index} has no {missing} field; GSM8K format needs "
                        f"'question' and 'answer' (reasoning ending '#### <number>')") from None
    except ValueError as error:
        raise DataError(f"{field}: record {index}: {error}") from None


def _records(spec: DatasetSpec, field: str) -> list[dict]:
    if spec.source == "path":
        return _jsonl_records(Path(spec.path), spec.split, field)
    return _hub_records(spec, field)


def _jsonl_records(path: Path, split: str, field: str) -> list[dict]:
    if path.is_dir():
        candidates = [path / f"{split}.jsonl", *sorted(path.glob(f"{split}*.jsonl"))]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            raise DataError(f"{field}.path: no {split}.jsonl in {path}; put the split there or name the file")
        path = found
    if not path.is_file():
        raise DataError(f"{field}.path: {path} does not exist on this volume")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{field}.path: {path}:{number} is not JSON ({error.msg})") from None
    return records


def _hub_records(spec: DatasetSpec, field: str) -> list[dict]:
    import datasets  # the light core does not need it

    try:
        return list(datasets.load_dataset(spec.hub_id, spec.subset, split=spec.split))
    except Exception as error:  # the hub client raises many types; all mean "cannot read this"
        raise DataError(f"{field}.hubId: cannot load {spec.hub_id!r} (subset {spec.subset!r}, split "
                        f"{spec.split!r}): {error}") from None


def write_traces(path: Path, traces: list[Trace], scores: list[float] | None = None) -> None:
    """Traces as GSM8K-format JSONL (plus the PRM score), readable again by source: path."""
    lines = []
    for index, trace in enumerate(traces):
        record = {"question": trace.problem.question,
                  "answer": solution_text(trace.steps, trace.answer, "\n"),
                  "reference_answer": trace.problem.answer}
        if scores is not None:
            record["prm_score"] = round(scores[index], 6)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def read_selected(path: Path) -> list[Trace]:
    traces = []
    for record in _jsonl_records(path, "train", str(path)):
        problem = parse_gsm8k(record["question"], f"#### {record['reference_answer']}")
        steps, answer = split_solution(record["answer"], "\n")
        traces.append(Trace(problem, tuple(steps), answer or ""))
    return traces
