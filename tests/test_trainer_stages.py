"""The stages as a pod runs them (``rto train <stage> --plan``), on the embedded tiny model."""

import json

import pytest
import torch

from reasoning_trainer import eval as evaluation
from reasoning_trainer import models, prm, train
from reasoning_trainer.data import embedded
from reasoning_trainer.data.sources import read_selected
from reasoning_trainer.job import load_job
from reasoning_trainer.select import trace_score


def results(plan_path, stage):
    return json.loads((plan_path.parent / stage / "results.json").read_text())


def test_prm_scores_all_steps_in_one_pass_as_if_each_prefix_were_scored_alone(plan_file):
    job = load_job(plan_file())
    tokenizer = models.load_tokenizer(job, "rewardModel")
    model = models.load_reward_model(job, "select")
    problem = next(p for p in embedded.problems(20, seed=5) if len(p.steps) == 3)
    steps = prm.prm_steps(problem.steps, problem.answer)
    separator = job.spec.step_separator
    [whole] = prm.score(model, tokenizer, [(problem.question, steps)], separator, 8, 512)
    assert len(whole) == len(steps)
    for count in range(1, len(steps) + 1):
        [prefix] = prm.score(model, tokenizer, [(problem.question, steps[:count])], separator, 8, 512)
        assert prefix == pytest.approx(whole[:count], abs=1e-5)
    # Batched with longer and shorter solutions (right padding), the scores do not move.
    others = [(p.question, prm.prm_steps(p.steps, p.answer)) for p in embedded.problems(5, seed=6)]
    batched = prm.score(model, tokenizer, [*others, (problem.question, steps)], separator, 8, 512)
    assert batched[-1] == pytest.approx(whole, abs=1e-5)


def test_select_samples_the_pool_trains_the_prm_then_keeps_the_top_scored_half(plan_file):
    path = plan_file()
    assert train.main("select", str(path), metrics_port=0) == 0
    result = results(path, "select")
    job = load_job(path)
    pool = read_selected(job.paths.pool)
    # The pool is the generator's own solutions (2 per problem), never the reference ones.
    assert len(pool) + result["metrics"].get("pool_unanswered", 0) == 2 * 60
    assert result["metrics"]["pool"] == len(pool) and result["metrics"]["kept"] == round(len(pool) / 2)
    references = {problem.question: problem.steps for problem in embedded.problems(60, seed=7)}
    assert {trace.problem.question for trace in pool} <= set(references)
    assert any(trace.steps != references[trace.problem.question] for trace in pool)
    reward_model = result["details"]["reward_model"]
    assert reward_model["labels"] == ["montecarlo"] and reward_model["montecarlo_traces"] > 0
    assert reward_model["validation"] == "exact"
    assert sum(result["details"]["histogram"]["pool"]) == len(pool)
    # TensorBoard is on by default: the PRM's training loss, step by step, under the stage's folder.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(job.paths.stage("select") / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("rto_loss/rewardModel")) >= 2
    # Re-score the whole pool with the PRM the stage saved: the scores are the ones the stage wrote, and
    # (maxPerProblem: 1, from the preset) each problem kept one trace, its best-scored.
    model = models.load_reward_model(job, "select")
    tokenizer = models.load_tokenizer(job, "rewardModel")
    select = job.spec.stages.select
    scores = [trace_score(s, select.aggregate, select.step_weight, select.trajectory_weight) for s in prm.score(
        model, tokenizer, [(t.problem.question, prm.prm_steps(t.steps, t.answer)) for t in pool],
        job.spec.step_separator, 16, 256)]
    stored = [json.loads(line)["prm_score"] for line in job.paths.pool.read_text().splitlines()]
    assert scores == pytest.approx(stored, abs=1e-5)
    selected = read_selected(job.paths.selected)
    assert len(selected) == result["metrics"]["kept"] == len({trace.problem.question for trace in selected})
    best = {}
    for trace, score in zip(pool, scores):
        best[trace.problem.question] = max(best.get(trace.problem.question, 0.0), score)
    by_trace = {(t.problem.question, t.steps, t.answer): score for t, score in zip(pool, scores)}
    for trace in selected:
        assert by_trace[(trace.problem.question, trace.steps, trace.answer)] >= best[trace.problem.question] - 1e-5


def test_select_run_again_after_saving_its_prm_trains_it_from_the_spec_model_not_the_saved_one(plan_file):
    path = plan_file()
    assert train.main("select", str(path), metrics_port=0) == 0
    first = results(path, "select")["details"]["reward_model"]
    # The pod died after saving the PRM and before writing its results: the retry runs select again.
    (path.parent / "select" / "results.json").unlink()
    assert train.main("select", str(path), metrics_port=0) == 0
    again = results(path, "select")["details"]["reward_model"]
    assert again["before"] == pytest.approx(first["before"]), "the retry trained the saved PRM further"
    assert again["after"] == pytest.approx(first["after"], abs=1e-3)


def test_eval_numbers_match_a_hand_checked_case(plan_file, monkeypatch):
    job = load_job(plan_file({"stages": {"eval": {"methods": ["pass@1", "rm@k", "majority@k"], "k": 3}}}))
    problems = embedded.problems(2, seed=9, split="test")
    first, second = problems[0].answer, problems[1].answer
    wrong = lambda answer: str(int(answer) + 1)  # noqa: E731
    greedy = [[f"#### {first}"], [f"#### {wrong(second)}"]]
    sampled = [
        [f"a\n\n#### {wrong(first)}", f"b\n\n#### {wrong(first)}", f"c\n\n#### {first}"],
        [f"d\n\n#### {second}", f"e\n\n#### {wrong(second)}", f"f\n\n#### {wrong(second)}.0"],
    ]
    monkeypatch.setattr(evaluation, "solve", lambda *a, samples, **k: greedy if samples == 1 else sampled)
    # The PRM's favourite: the third sample of problem 1 (right) and the second of problem 2 (wrong).
    favourite = {"c", "e"}
    monkeypatch.setattr(evaluation.prm, "score", lambda model, tok, solutions, *a, **k: [
        [0.9 if steps[0] in favourite else 0.2] for _, steps in solutions])
    scores = evaluation.score_benchmark(job, None, None, None, None, problems)
    assert scores == {"pass@1": 0.5, "pass@k": 1.0, "majority@k": 0.0, "rm@k": 0.5}


def test_untrained_and_trained_models_load_the_same_way(plan_file, tmp_path):
    job = load_job(plan_file())
    generator = models.load_generator(job, "sft")
    assert isinstance(generator.model.layers[0].self_attn.q_proj.weight, torch.Tensor)
    assert not generator.training
    again = models.load_generator(job, "sft")
    assert torch.equal(generator.lm_head.weight, again.lm_head.weight)  # same embedded init in every stage


def test_a_stage_missing_from_the_plan_is_refused_with_the_enabled_stages(plan_file, tmp_path, monkeypatch, caplog):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("RTO_TERMINATION_LOG", str(log))
    assert train.main("rl", str(plan_file()), metrics_port=0) == 2
    reason = json.loads(log.read_text())["reason"]
    assert "stage 'rl' is not in this run's plan (enabled stages: select, sft, eval)" in reason
    assert train.main("sft", str(tmp_path / "missing.json"), metrics_port=0) == 2


def test_sft_before_select_fails_naming_the_stage_to_run_first_without_a_traceback(plan_file, tmp_path,
                                                                                  monkeypatch, caplog):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("RTO_TERMINATION_LOG", str(log))
    assert train.main("sft", str(plan_file()), metrics_port=0) == 1
    reason = json.loads(log.read_text())["reason"]
    assert "stages.select: its output" in reason and "run the select stage first" in reason
    assert "Traceback" not in caplog.text


def test_a_stage_that_already_succeeded_reports_its_results_without_training_again(plan_file, tmp_path,
                                                                                  monkeypatch):
    from reasoning_trainer.checkpoints import write_json

    log = tmp_path / "termination-log"
    monkeypatch.setenv("RTO_TERMINATION_LOG", str(log))
    job = load_job(plan_file())
    write_json(job.paths.results("eval"), {"stage": "eval", "phase": "Succeeded", "durationSeconds": 42.0,
                                           "accuracy": 0.75, "checkpoint": None, "metrics": {"a/pass@1": 0.75}})
    monkeypatch.setattr(train, "_recipe", lambda stage: pytest.fail("the finished stage ran again"))
    assert train.main("eval", str(plan_file()), metrics_port=0) == 0
    message = json.loads(log.read_text())
    assert (message["phase"], message["accuracy"], message["durationSeconds"]) == ("Succeeded", 0.75, 42.0)
    assert message["metrics"] == {"a/pass@1": 0.75}


def test_packed_sft_on_a_gpu_uses_flex_attention_unless_the_spec_names_a_kernel(plan_file):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    job = load_job(plan_file())
    assert models.attention_kernel(job, "sft", "generator", True, cuda) == "flex_attention"
    assert models.attention_kernel(job, "sft", "generator", True, cpu) == "sdpa"
    assert models.attention_kernel(job, "eval", "generator", False, cuda) == "sdpa"
    unpacked = load_job(plan_file({"stages": {"sft": {"packing": False}}}))
    assert models.attention_kernel(unpacked, "sft", "generator", True, cuda) == "sdpa"
    pinned = load_job(plan_file({"models": {"generator": {"attnImplementation": "eager"}}}))
    assert models.attention_kernel(pinned, "sft", "generator", True, cuda) == "eager"


def test_the_generators_instruction_follows_the_question_in_every_prompt(plan_file):
    from reasoning_trainer.generation import prompt_ids

    job = load_job(plan_file())
    tokenizer = models.load_tokenizer(job, "generator")
    plain = tokenizer.decode(prompt_ids(tokenizer, "What is 2 + 3?"))
    asked = tokenizer.decode(prompt_ids(tokenizer, "What is 2 + 3?", "End with #### 5."))
    assert "End with #### 5." not in plain
    assert asked.index("What is 2 + 3?") < asked.index("End with #### 5.")


def test_eval_sampling_is_seeded_so_the_same_models_give_the_same_figures(plan_file):
    job = load_job(plan_file({"stages": {"eval": {"methods": ["pass@1", "majority@k"], "k": 3,
                                                  "temperature": 1.0}}}))
    generator = models.load_generator(job, "eval")
    tokenizer = models.load_tokenizer(job, "generator")
    problems = embedded.problems(6, seed=9, split="test")
    calls = []
    real = evaluation.solve

    def recorded(*args, **kwargs):
        texts = real(*args, **kwargs)
        calls.append(texts)
        return texts

    evaluation.solve = recorded
    try:
        first = evaluation.score_benchmark(job, generator, tokenizer, None, None, problems)
        torch.manual_seed(12345)  # whatever ran before must not matter
        second = evaluation.score_benchmark(job, generator, tokenizer, None, None, problems)
    finally:
        evaluation.solve = real
    assert first == second
    assert calls[1] == calls[3], "the sampled solutions themselves are the same"


def test_wilson_intervals_match_published_values():
    from reasoning_trainer.intervals import wilson

    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(185, 200) == pytest.approx((0.8803, 0.9539), abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_a_stage_reports_the_gpu_hours_its_plan_gave_it(plan_file):
    path = plan_file({"stages": {"select": {"enabled": False}, "sft": {"enabled": False},
                                 "eval": {"methods": ["pass@1"]}}})
    document = json.loads(path.read_text())
    document["plan"]["stages"]["eval"]["gpus"] = 2  # as a plan for two GPUs would say; the stage runs here
    path.write_text(json.dumps(document))
    assert train.main("eval", str(path), metrics_port=0) == 0
    result = results(path, "eval")
    # durationSeconds is rounded to 0.01 s, and this eval can take well under a second.
    assert result["metrics"]["gpu_hours"] == pytest.approx(2 * result["durationSeconds"] / 3600, abs=2 * 0.005 / 3600)


def test_eval_reports_progress_after_each_part_of_a_benchmark(plan_file, monkeypatch):
    from reasoning_trainer.metrics import StageMetrics

    seen = []
    monkeypatch.setattr(StageMetrics, "progress", lambda self, done: seen.append(round(done, 3)))
    path = plan_file({"stages": {"select": {"enabled": False}, "sft": {"enabled": False},
                                 "eval": {"methods": ["pass@1", "majority@k", "rm@k"], "k": 2}}})
    assert train.main("eval", str(path), metrics_port=0) == 0
    # greedy answers, the k samples, the PRM's picks: a console or dashboard sees the stage move
    # between them instead of jumping from 0 to 1 at the end.
    assert seen == [0.333, 0.667, 1.0, 1.0]
