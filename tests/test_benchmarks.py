"""Benchmark formats as data: every registry entry reads, every answer format grades, offline."""

import pytest

from reasoning_trainer import benchmarks
from reasoning_trainer.data.answers import FORMATS, last_boxed
from reasoning_trainer.data.problems import split_solution
from reasoning_trainer.data.sources import DataError, load_problems
from reasoning_trainer.data.step_labels import StepLabelError, traces
from reasoning_trainer.eval import averages, majority
from reasoning_trainer.schema import validate_spec
from reasoning_trainer.schema.data import BenchmarkSpec

SEVEN = ["gsm8k", "math500", "minerva-math", "gaokao2023en", "olympiadbench", "college-math", "mmlu-stem"]


def test_the_registry_names_the_seven_benchmarks_with_hub_ids_fields_and_formats():
    assert benchmarks.names() == SEVEN
    for name in SEVEN:
        spec = BenchmarkSpec.model_validate({"name": name, "benchmark": name})
        assert spec.source == "hub" and spec.hub_id, name
        assert spec.answer_format == {"gsm8k": "gsm8k", "mmlu-stem": "choice"}.get(name, "boxed")
    # A field the spec sets wins over the registry's; hub fields stay off a local source.
    mine = BenchmarkSpec.model_validate({"name": "m", "benchmark": "math500", "source": "path", "path": "/data/m",
                                         "questionField": "question"})
    assert (mine.hub_id, mine.question_field, mine.answer_field) == (None, "question", "answer")


@pytest.mark.parametrize("name", SEVEN)
def test_each_benchmarks_samples_read_in_its_own_record_format_and_grade_their_references(name):
    spec = BenchmarkSpec.model_validate({"name": name, "benchmark": name, "source": "embedded"})
    problems = load_problems(spec, "spec.data.eval[0]")
    assert len(problems) >= 4
    for problem in problems:
        stated = {"gsm8k": f"#### {problem.answer}", "choice": f"The answer is \\boxed{{{problem.answer}}}."}.get(
            problem.answer_format, f"So the result is $\\boxed{{{problem.answer}}}$.")
        steps, answer = split_solution(f"Let us work it out.\n\n{stated}", "\n\n", problem.answer_format)
        assert problem.solved_by(answer), (name, problem.answer, answer)
        assert not problem.solved_by(None)


@pytest.mark.parametrize("answer_format, text, expected, right", [
    ("gsm8k", "3 + 4 = 7\n\n#### 1,000", "1000", True),
    ("gsm8k", "no final line but 7 - 2 = 5", "5", True),
    ("gsm8k", "#### 5", "6", False),
    ("boxed", "so $x = \\boxed{\\dfrac{1}{2}}$", "0.5", True),
    ("boxed", "\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt{2}", True),
    ("boxed", "the set is \\boxed{3, 2}", "2, 3", True),
    ("boxed", "\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("boxed", "\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False),
    ("boxed", "The answer is 7 without a box.", "7", False),
    ("choice", "Option C fits. The answer is (C).", "C", True),
    ("choice", "So we pick \\boxed{B}", "B", True),
    ("choice", "So we pick \\boxed{B}", "D", False),
])
def test_answers_are_read_and_compared_by_their_format(answer_format, text, expected, right):
    answer = FORMATS[answer_format].final(text)
    assert FORMATS[answer_format].same(answer, expected) is right


def test_a_boxed_answer_keeps_nested_braces_and_the_last_box_wins():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
    assert last_boxed("an open \\boxed{1 + {2") is None


def test_majority_voting_counts_equivalent_answers_together():
    numbers = [([], "0.5"), ([], "1/2"), ([], "3"), ([], None)]
    assert majority(numbers, "gsm8k") == "0.5"
    letters = [([], "b"), ([], "A"), ([], "B")]
    assert majority(letters, "choice") == "b"


def test_the_average_gives_each_benchmark_one_vote():
    per = {"gsm8k": {"problems": 1319, "pass@1": 0.8, "rm@k": 0.9}, "math500": {"problems": 500, "pass@1": 0.4}}
    assert averages(per) == {"pass@1": pytest.approx(0.6), "rm@k": 0.9}


def test_a_benchmark_record_missing_its_field_names_the_field_to_set(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "What is 1 + 1?", "solution": "\\\\boxed{2}"}\n')
    spec = BenchmarkSpec.model_validate({"name": "m", "benchmark": "math500", "source": "path", "path": str(tmp_path),
                                         "questionField": "question"})
    with pytest.raises(DataError, match=r"spec.data.eval\[0\]: record 0 has no 'answer' field.*answerField"):
        load_problems(spec, "spec.data.eval[0]")


def test_a_multiple_choice_benchmark_needs_the_field_of_its_options():
    with pytest.raises(Exception, match="choicesField"):
        validate_spec({"preset": "tiny", "data": {"eval": [{"name": "q", "source": "path", "path": "/x",
                                                            "answerFormat": "choice"}]}})


def test_labelled_steps_read_in_trl_math_shepherd_and_prm800k_formats():
    trl = traces([{"prompt": "2 + 2?", "completions": ["2 + 2 = 4", "The answer is 5"], "labels": [True, False]}],
                 "trl", "spec.data.stepLabels")[0]
    assert (trl.problem.question, trl.steps, trl.labels) == ("2 + 2?", ("2 + 2 = 4", "The answer is 5"), (True, False))
    question = "Ann has 3 pens and buys 2. How many? "
    shepherd = traces([{"input": question + "Step 1: 3 + 2 = 5 ки\nStep 2: The answer is: 6 ки",
                        "label": question + "Step 1: 3 + 2 = 5 +\nStep 2: The answer is: 6 -"}],
                      "math-shepherd", "spec.data.stepLabels")[0]
    assert (shepherd.problem.question, shepherd.steps, shepherd.labels) == (
        question.strip(), ("3 + 2 = 5", "The answer is: 6"), (True, False))
    rated = {"question": {"problem": "1 + 1?"}, "label": {"steps": [
        {"completions": [{"text": "1 + 1 = 2", "rating": 1}], "chosen_completion": 0},
        {"completions": [{"text": "so 3", "rating": -1}, {"text": "so 2", "rating": 1}], "chosen_completion": None},
        {"completions": [{"text": "never rated against the mistake", "rating": 1}], "chosen_completion": 0}]}}
    prm800k = traces([rated], "prm800k", "spec.data.stepLabels")[0]
    assert (prm800k.steps, prm800k.labels) == (("1 + 1 = 2", "so 3"), (True, False))
    with pytest.raises(StepLabelError, match="record 0 is not in trl format"):
        traces([{"prompt": "x"}], "trl", "spec.data.stepLabels")
