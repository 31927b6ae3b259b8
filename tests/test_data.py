"""Problems, answers and step labels: the data every stage reads."""

import json
import random

import pytest

from reasoning_trainer.data import embedded
from reasoning_trainer.data.answers import answers_match, extract_number
from reasoning_trainer.data.problems import corrupt, parse_gsm8k, reference_trace, solution_text, split_solution
from reasoning_trainer.data.sources import DataError, load_problems, read_selected, write_traces
from reasoning_trainer.schema.data import DatasetSpec


@pytest.mark.parametrize("text, expected", [
    ("#### 1,234", "1234"),
    ("The total is $5.50.", "5.5"),
    ("she owes -3 dollars", "-3"),
    ("3/4 of the cake", "0.75"),
    ("a third is 1/3", "1/3"),
    ("answer: 0.25", "0.25"),
    ("no number here", None),
])
def test_numbers_are_extracted_and_normalised(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize("predicted, expected, same", [
    ("1,000", "1000", True), ("0.5", "1/2", True), ("-3.0", "-3", True), ("72", "72.5", False),
    (None, "3", False), ("12", "-12", False),
])
def test_answers_match_numerically(predicted, expected, same):
    assert answers_match(predicted, expected) is same


def test_gsm8k_record_becomes_steps_without_calculator_notes():
    problem = parse_gsm8k("Natalia sold clips to 48 of her friends...",
                          "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 "
                          "clips.\n#### 72")
    assert problem.answer == "72"
    assert problem.steps == ("Natalia sold 48/2 = 24 clips in May.", "Altogether she sold 48+24 = 72 clips.")


def test_gsm8k_record_without_final_answer_is_rejected():
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k("q", "no final line")


def test_generated_text_splits_into_steps_and_answer():
    text = solution_text(["3 + 4 = 7", "7 - 2 = 5"], "5", "\n\n")
    assert split_solution(text, "\n\n") == (["3 + 4 = 7", "7 - 2 = 5"], "5")
    # No final line: the last number of the last step is the answer.
    assert split_solution("3 + 4 = 7\n\n7 - 2 = 5", "\n\n") == (["3 + 4 = 7", "7 - 2 = 5"], "5")


def test_embedded_problems_are_deterministic_correct_and_held_out():
    train = embedded.problems(300, seed=0)
    assert train == embedded.problems(300, seed=0)
    test = embedded.problems(100, seed=1, split="test")
    assert not {p.question for p in train} & {p.question for p in test}
    # No test problem repeats a training problem's sequence of actions, so no step chain either.
    compositions = {p.meta["composition"] for p in embedded.problems(2000, seed=3)}
    assert not compositions & {p.meta["composition"] for p in test}
    assert not {p.steps for p in embedded.problems(2000, seed=3)} & {p.steps for p in test}
    assert {len(p.steps) for p in test} == {2, 3, 4}
    # The dev split (what the embedded base's pretraining stops on) shares nothing with test or train.
    dev = embedded.problems(300, seed=1, split="dev")
    assert not {p.meta["composition"] for p in dev} & ({p.meta["composition"] for p in test} | compositions)
    assert not {p.steps for p in dev} & {p.steps for p in embedded.problems(500, seed=4, split="test")}
    for problem in train + test + dev:
        value = None
        for step in problem.steps:
            left, op, right, _, result = step.split()
            assert value is None or int(left) == value
            value = int(left) + int(right) if op == "+" else int(left) - int(right)
            assert int(result) == value
        assert problem.answer == str(value)


def test_exact_step_labels_mark_the_first_wrong_step_and_every_later_one():
    problem = next(p for p in embedded.problems(50, seed=2) if len(p.steps) == 3)
    first, second, third = problem.steps
    assert embedded.step_labels(problem, [first, second, third]) == (True, True, True)
    wrong = second.replace("=", "= 1")  # the result of step two changed
    assert embedded.step_labels(problem, [first, wrong, third]) == (True, False, False)
    assert embedded.step_labels(problem, [first]) == (True,)
    assert embedded.step_labels(problem, [first, second, third, third]) == (True, True, True, False)


def test_corrupted_trace_is_labelled_wrong_from_the_changed_step_on():
    rng = random.Random(3)
    problem = next(p for p in embedded.problems(50, seed=2) if len(p.steps) == 3)
    for _ in range(20):
        trace = corrupt(reference_trace(problem), rng)
        wrong_at = trace.labels.index(False)
        assert trace.steps[:wrong_at] == problem.steps[:wrong_at]
        assert trace.steps[wrong_at] != problem.steps[wrong_at]
        assert not any(trace.labels[wrong_at:])
        assert not trace.correct


def test_jsonl_folder_is_read_and_errors_name_the_field(tmp_path):
    record = {"question": "Tom has 3 pens. He buys 2 more. How many?", "answer": "3 + 2 = 5\n#### 5"}
    (tmp_path / "test.jsonl").write_text(json.dumps(record) + "\n")
    spec = DatasetSpec(source="path", path=str(tmp_path), split="test")
    [problem] = load_problems(spec, "spec.data.eval[0]")
    assert problem.answer == "5"
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"spec.data.eval\[0\]: record 0 has no 'answer' field"):
        load_problems(spec, "spec.data.eval[0]")
    with pytest.raises(DataError, match="spec.data.train.path: no train.jsonl"):
        load_problems(DatasetSpec(source="path", path=str(tmp_path)), "spec.data.train")


def test_selected_traces_round_trip_even_with_a_line_break_inside_a_step(tmp_path):
    pool = embedded.trace_pool(20, seed=4)
    first = pool[0]
    pool[0] = type(first)(first.problem, (first.steps[0] + "\nso far so good", *first.steps[1:]), first.answer)
    write_traces(tmp_path / "selected.jsonl", pool, [0.5] * len(pool))
    again = read_selected(tmp_path / "selected.jsonl")
    assert [(t.steps, t.answer, t.correct) for t in again] == [(t.steps, t.answer, t.correct) for t in pool]
