"""Monte-Carlo step labels (Math-Shepherd) and the position-only baseline a PRM must beat.

The labelling test drives prm_labels with a scripted generator whose mistakes are known in
advance: a tiny random model cannot be made to err at a chosen step. Everything else is real: the
embedded tokenizer, the batching, the answer checking.
"""

import pytest
import torch

from reasoning_trainer.data.problems import Problem, Trace
from reasoning_trainer.prm import auroc, labelled_steps
from reasoning_trainer.prm_labels import Sampling, monte_carlo_traces, position_baseline
from reasoning_trainer.tokenizer import load_or_build

SEPARATOR = "\n\n"
PROBLEM = Problem("Ava has 3 apples. Then Ava finds 1 more. Then Ava loses 2. How many apples does Ava have now?",
                  "2", ("3 + 1 = 4", "4 - 2 = 2"))


class ScriptedGenerator(torch.nn.Module):
    """Writes a fixed solution per sample from the bare question; from a prefix (which ends with a
    step), writes the separator and finishes the arithmetic right unless the prefix already holds
    the wrong step "3 + 1 = 5"."""

    def __init__(self, tokenizer, solutions: list[str]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.solutions, self.prompts_seen = tokenizer, solutions, []

    def generate(self, input_ids, attention_mask, num_return_sequences, max_new_tokens, pad_token_id, **_):
        rows = []
        for prompt, mask in zip(input_ids, attention_mask):
            text = self.tokenizer.decode(prompt[mask.bool()], skip_special_tokens=True)
            self.prompts_seen.append(text)
            for sample in range(num_return_sequences):
                if _bare_question(text):
                    continuation = self.solutions[sample]
                elif "3 + 1 = 5" in text:
                    continuation = "\n\n5 - 2 = 3\n\n#### 3"
                else:
                    continuation = "\n\n#### 2" if "4 - 2 = 2" in text else "\n\n4 - 2 = 2\n\n#### 2"
                rows.append(prompt.tolist() + self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        width = max(len(row) for row in rows)
        return torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows])


def _bare_question(prompt: str) -> bool:
    """The prompt ends where the answer starts (the chat template's assistant turn)."""
    return prompt.rstrip().endswith(("assistant", "Answer:"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_or_build(tmp_path_factory.mktemp("tokenizer"), 512, SEPARATOR)


def test_a_step_is_right_when_a_continuation_from_it_reaches_the_answer_and_wrong_from_the_first_error(tokenizer):
    right = "3 + 1 = 4\n\n4 - 2 = 2\n\n#### 2"
    wrong = "3 + 1 = 5\n\n5 - 2 = 3\n\n#### 3"
    generator = ScriptedGenerator(tokenizer, [right, wrong, right])
    sampling = Sampling(samples=3, completions=2, max_new_tokens=32, max_prompt_tokens=96, temperature=0.8,
                        top_p=1.0, batch_size=8)
    traces, soft = monte_carlo_traces(generator, tokenizer, [PROBLEM], SEPARATOR, sampling, seed=0)
    by_steps = {trace.steps: (trace, shares) for trace, shares in zip(traces, soft)}
    good, good_shares = by_steps[("3 + 1 = 4", "4 - 2 = 2")]
    bad, bad_shares = by_steps[("3 + 1 = 5", "5 - 2 = 3")]
    assert good.labels == (True, True) and good_shares == [1.0, 1.0]
    assert bad.labels == (False, False) and bad_shares == [0.0, 0.0]
    assert labelled_steps(good)[1] == [True, True, True]
    assert labelled_steps(bad)[1] == [False, False, False]
    # Two right samples share their prefixes: each prefix was continued once. After a prefix no
    # continuation rescued, nothing more was sampled.
    prefixes = [text for text in generator.prompts_seen if not _bare_question(text)]
    assert sum("3 + 1 = 4" in text and "4 - 2 = 2" not in text for text in prefixes) == 1
    assert not any("5 - 2 = 3" in text for text in prefixes), "the wrong path was continued past its first error"
    # A prefix ends with its last step, not a separator: the generator writes the separator itself
    # (text ending in one tokenizes unlike the generator's own output).
    assert all(text.rstrip(" ")[-1].isdigit() for text in prefixes), prefixes


def test_a_right_solutions_prefixes_are_right_without_sampling_them_when_no_share_is_trained(tokenizer):
    right = "3 + 1 = 4\n\n4 - 2 = 2\n\n#### 2"
    wrong = "3 + 1 = 5\n\n5 - 2 = 3\n\n#### 3"
    generator = ScriptedGenerator(tokenizer, [right, wrong])
    sampling = Sampling(samples=2, completions=2, max_new_tokens=32, max_prompt_tokens=96, temperature=0.8,
                        top_p=1.0, batch_size=8)
    traces, _ = monte_carlo_traces(generator, tokenizer, [PROBLEM], SEPARATOR, sampling, seed=0,
                                   shares_of_right_solutions=False)
    assert {trace.steps: trace.labels for trace in traces} == {("3 + 1 = 4", "4 - 2 = 2"): (True, True),
                                                               ("3 + 1 = 5", "5 - 2 = 3"): (False, False)}
    # Only the wrong solution's first prefix was continued: the right one reached the answer itself.
    prefixes = [text for text in generator.prompts_seen if not _bare_question(text)]
    assert len(prefixes) == 1 and "3 + 1 = 5" in prefixes[0]


def test_the_answer_line_is_wrong_when_the_answer_is_even_if_every_step_was_judged_right():
    trace = Trace(PROBLEM, ("3 + 1 = 4", "4 - 2 = 2"), "7", (True, True))
    assert labelled_steps(trace)[1] == [True, True, False]


def test_the_position_baseline_scores_each_step_by_how_often_steps_there_were_right():
    train = [[True, True, False], [True, False, False], [True, True, True]]
    validation = [[True, False], [True, True, True, False]]
    scores = position_baseline(train, validation)
    assert scores[0] == pytest.approx([1.0, 2 / 3])
    assert scores[1] == pytest.approx([1.0, 2 / 3, 1 / 3, 1 / 3])  # beyond the deepest: the last known
    flat_scores = [s for row in scores for s in row]
    flat_labels = [y for row in validation for y in row]
    # Position alone already ranks these well: the bar a PRM has to clear is not 0.5.
    assert auroc(flat_scores, flat_labels) > 0.7


def test_a_traces_selection_score_weighs_its_steps_and_its_final_verdict():
    from reasoning_trainer.select import trace_score

    scores = [0.9, 0.5, 0.2]  # two reasoning steps, then the final answer line
    assert trace_score(scores, "mean", 0.5, 0.5) == pytest.approx((0.7 + 0.2) / 2)
    assert trace_score(scores, "min", 1.0, 0.0) == pytest.approx(0.5)
    assert trace_score(scores, "min", 0.0, 2.0) == pytest.approx(0.2), "the trajectory verdict alone"
    assert trace_score([0.4], "mean", 0.5, 0.5) == pytest.approx(0.4), "an answer with no reasoning step"


def test_selection_keeps_each_problems_best_trace_instead_of_the_easy_problems_only():
    from reasoning_trainer.select import best

    easy, hard = Problem("easy?", "1", ("0 + 1 = 1",)), Problem("hard?", "9", ("1 + 4 = 5", "5 + 4 = 9"))
    pool = [Trace(easy, ("0 + 1 = 1",), "1"), Trace(easy, ("0 + 1 = 1",), "1"),
            Trace(hard, ("1 + 4 = 5", "5 + 4 = 9"), "9"), Trace(hard, ("1 + 4 = 5", "5 + 3 = 8"), "8")]
    scores = [0.9, 0.8, 0.6, 0.3]
    assert best(pool, scores, keep=2, per_problem=None) == [0, 1]  # a global top 2: the easy problem twice
    assert best(pool, scores, keep=2, per_problem=1) == [0, 2]  # its best trace from each problem
    assert best(pool, scores, keep=4, per_problem=1) == [0, 2]  # never more than one per problem
