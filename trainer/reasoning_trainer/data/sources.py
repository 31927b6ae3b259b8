"""Read a DatasetSpec: the embedded generator, a JSONL file or folder, or a hub dataset. Training data
is GSM8K-format; a benchmark's records are read through its fields and answer format."""

from __future__ import annotations

import json
from pathlib import Path

from .. import benchmarks
from ..schema.data import BenchmarkSpec, DatasetSpec
from . import embedded
from .answers import CHOICE_LETTERS, choice_letter
from .problems import Problem, Trace, parse_gsm8k, solution_text, split_solution


class DataError(ValueError):
    """A dataset that cannot be read, with the field to fix."""


def load_problems(spec: DatasetSpec, field: str) -> list[Problem]:
    if spec.source == "embedded" and isinstance(spec, BenchmarkSpec) and spec.benchmark:
        records = benchmarks.sample_records(spec.benchmark)
    elif spec.source == "embedded":
        records = None
        problems = embedded.problems(spec.size, spec.seed, spec.split)
    else:
        records = read_records(spec, field)
    if records is not None:
        problems = [_problem(record, spec, field, index) for index, record in enumerate(records)]
    return problems[: spec.limit] if spec.limit else problems


def benchmark_instruction(spec: BenchmarkSpec, default: str) -> str:
    """What follows each question of this benchmark: its own instruction, else the generator's."""
    return spec.instruction if spec.instruction is not None else default


def load_pool(spec: DatasetSpec, field: str) -> list[Trace]:
    """Reasoning traces to score; a GSM8K record's answer is its trace (labels unknown)."""
    if spec.source == "embedded":
        pool = embedded.trace_pool(spec.size, spec.seed)
    else:
        pool = [Trace(problem, problem.steps, problem.answer) for problem in load_problems(spec, field)]
    return pool[: spec.limit] if spec.limit else pool


def _problem(record: dict, spec: DatasetSpec, field: str, index: int) -> Problem:
    answer_format = spec.answer_format if isinstance(spec, BenchmarkSpec) else "gsm8k"
    question_field = spec.question_field if isinstance(spec, BenchmarkSpec) else "question"
    answer_field = spec.answer_field if isinstance(spec, BenchmarkSpec) else "answer"
    try:
        question, answer = record[question_field], record[answer_field]
        if answer_format == "gsm8k":
            return parse_gsm8k(question, answer)
        if answer_format == "choice":
            return Problem(_with_options(question, record[spec.choices_field]), choice_letter(answer),
                           answer_format="choice")
        return Problem(str(question).strip(), _boxed_gold(answer), answer_format="boxed")
    except KeyError as missing:
        expected = {"gsm8k": "'question' and 'answer' (reasoning ending '#### <number>')"}.get(
            answer_format, f"{missing} (set the benchmark's questionField, answerField, choicesField)")
        raise DataError(f"{field}: record {index} has no {missing} field; {answer_format} format needs "
                        f"{expected}") from None
    except ValueError as error:
        raise DataError(f"{field}: record {index}: {error}") from None


def _boxed_gold(answer) -> str:
    """A reference answer as LaTeX: OlympiadBench lists its answers, several write them in $...$."""
    if isinstance(answer, list):
        if not answer:
            raise ValueError("the answer list is empty")
        answer = answer[0]
    return str(answer).strip().strip("$").strip()


def _with_options(question: str, choices: list) -> str:
    """The question with its options lettered A, B, ... as the model reads them."""
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(f"choices must list 2 to {len(CHOICE_LETTERS)} options")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(CHOICE_LETTERS, choices))
    return f"{str(question).strip()}\n\n{options}"


def read_records(spec: DatasetSpec, field: str) -> list[dict]:
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
    """Traces as GSM8K-format JSONL (plus the PRM score), readable again by source: path. ``steps`` keeps
    each step as written: a sampled step may itself hold a line break, which the answer text would split."""
    lines = []
    for index, trace in enumerate(traces):
        record = {"question": trace.problem.question,
                  "answer": solution_text(trace.steps, trace.answer, "\n"),
                  "steps": list(trace.steps), "final_answer": trace.answer,
                  "reference_answer": trace.problem.answer}
        if scores is not None:
            record["prm_score"] = round(scores[index], 6)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def read_selected(path: Path) -> list[Trace]:
    if not path.is_file():
        raise DataError(f"stages.select: its output {path} does not exist; run the select stage first, "
                        "or set stages.select.enabled: false to train on data.train")
    traces = []
    for record in _jsonl_records(path, "train", "stages.select"):
        problem = parse_gsm8k(record["question"], f"#### {record['reference_answer']}")
        if "steps" in record:
            steps, answer = record["steps"], record["final_answer"]
        else:  # GSM8K-format traces written elsewhere: the answer text's lines are the steps
            steps, answer = split_solution(record["answer"], "\n")
        traces.append(Trace(problem, tuple(steps), answer or ""))
    return traces
