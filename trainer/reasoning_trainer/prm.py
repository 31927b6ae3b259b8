"""The process reward model: training on step labels, and scoring solutions step by step.

A solution is encoded once: the prompt, then every step followed by the step separator. The
PRM (a token-classification head on the base model) reads its verdict on each step at the
last token of that step's separator, so one forward pass scores all steps of a solution;
no prefix is ever re-encoded. The final ``#### N`` line is scored as a last step, so the
last score is the PRM's verdict on the outcome.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from transformers import DataCollatorForTokenClassification, Trainer

from . import models, training
from .checkpoints import StopRequest
from .data.problems import FINAL_MARK, Problem, Trace, corrupt, reference_trace
from .data.sources import load_problems
from .generation import prompt_ids
from .job import StageJob
from .metrics import StageMetrics
from .prm_labels import Sampling, monte_carlo_traces, position_baseline

IGNORE = -100
VALIDATION_SHARE = 0.1


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    positions: list[int]  # index of each scored step's last separator token


def prm_steps(steps, answer: str) -> list[str]:
    return [*steps, f"{FINAL_MARK} {answer}"]


def encode(tokenizer, question: str, steps: list[str], separator: str, max_tokens: int) -> Encoded:
    """The prompt followed by each step and separator; steps that do not fit are left out."""
    ids = prompt_ids(tokenizer, question)
    separator_ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    positions = []
    for step in steps:
        piece = tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids
        if len(ids) + len(piece) > max_tokens:
            break
        ids = ids + piece
        positions.append(len(ids) - 1)
    return Encoded(ids, positions)


@torch.no_grad()
def score(model, tokenizer, solutions: list[tuple[str, list[str]]], separator: str, batch_size: int,
          max_tokens: int) -> list[list[float]]:
    """P(step is correct) for every step of every (question, steps) solution."""
    encoded = [encode(tokenizer, question, steps, separator, max_tokens) for question, steps in solutions]
    device = next(model.parameters()).device
    scores: list[list[float]] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(item.input_ids) for item in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):  # right padding keeps the recorded positions valid
            ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
            mask[row, : len(item.input_ids)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        correct = logits.softmax(-1)[..., 1].cpu()
        scores += [[float(correct[row, position]) for position in item.positions] for row, item in enumerate(batch)]
    return scores


def aggregate(step_scores: list[float], how: str) -> float:
    if not step_scores:
        return 0.0
    if how == "min":
        return min(step_scores)
    if how == "last":
        return step_scores[-1]
    return sum(step_scores) / len(step_scores)


def step_label_traces(problems: list[Problem], incorrect_per_problem: int, seed: int) -> list[Trace]:
    """Each problem's reference solution plus corrupted copies with their step labels."""
    rng = random.Random(seed)
    traces = []
    for problem in problems:
        reference = reference_trace(problem)
        traces.append(reference)
        traces += [corrupt(reference, rng) for _ in range(incorrect_per_problem)]
    return traces


def labelled_steps(trace: Trace) -> tuple[list[str], list[bool]]:
    """Steps plus the final-answer line; the answer line is correct only if every step is and the
    answer is right."""
    return prm_steps(trace.steps, trace.answer), [*trace.labels, all(trace.labels) and trace.correct]


def train_reward_model(job: StageJob, stage: str, metrics: StageMetrics, stop: StopRequest,
                       progress_span: tuple[float, float]) -> dict:
    """Train the PRM on step labels; save it for later stages; return its step metrics."""
    sft = job.spec.stages.sft
    separator = job.spec.models.reward_model.step_separator
    tokenizer = models.load_tokenizer(job, "rewardModel")
    problems = load_problems(job.spec.data.train, "spec.data.train")
    if sft.max_examples:
        problems = problems[: sft.max_examples]
    held_out = max(1, int(len(problems) * VALIDATION_SHARE))
    train_traces = step_label_traces(problems[held_out:], sft.incorrect_per_problem, seed=0)
    validation = step_label_traces(problems[:held_out], max(sft.incorrect_per_problem, 1), seed=1)

    model = models.load_reward_model(job, stage, trainable=True)
    before = evaluate(model, tokenizer, validation, separator, sft.max_seq_length)
    dataset = [_example(tokenizer, trace, separator, sft.max_seq_length) for trace in train_traces]
    arguments = training.training_arguments(sft, job.stage_plan(stage), job.paths.checkpoints(stage, "reward-model"),
                                            job.spec.models.reward_model.dtype, training.on_gpu())
    outcome = _fit(model, tokenizer, dataset, arguments, metrics, stop, progress_span)
    model.eval()
    after = evaluate(model, tokenizer, validation, separator, sft.max_seq_length)
    for name, value in after.items():
        metrics.accuracy("prm-validation", name, value, step=outcome.steps)
    models.save_trained(model, tokenizer, job.paths.model("reward-model"))
    return {
        "steps": outcome.steps, "resumed_from_step": outcome.resumed_from_step, "final_loss": outcome.final_loss,
        "train_traces": len(train_traces), "validation_traces": len(validation),
        "before": before, "after": after, "checkpoint": str(job.paths.model("reward-model")),
    }


def train_on_generator_samples(job: StageJob, metrics: StageMetrics, stop: StopRequest,
                               progress_span: tuple[float, float]) -> dict:
    """Train the PRM further on Monte-Carlo step labels of the trained generator's own solutions
    (prm_labels.py), judged on other problems' samples against a position-only baseline."""
    sft, generation = job.spec.stages.sft, job.spec.models.generator.generation
    spec, separator = sft.monte_carlo, job.spec.models.reward_model.step_separator
    problems = load_problems(job.spec.data.train, "spec.data.train")
    held_out = max(1, int(min(len(problems), spec.problems) * VALIDATION_SHARE))
    evaluation = job.spec.stages.eval
    sampling = Sampling(spec.samples_per_problem, spec.completions, spec.max_new_tokens, generation.max_prompt_tokens,
                        generation.temperature, generation.top_p, evaluation.batch_size if evaluation else 32,
                        generation.instruction)
    generator = models.load_generator(job, "sft")  # the generator this stage just trained
    generator_tokenizer = models.load_tokenizer(job, "generator")
    started = time.monotonic()
    train_traces, _ = monte_carlo_traces(generator, generator_tokenizer, problems[held_out:held_out + spec.problems],
                                         separator, sampling, seed=0)
    validation, _ = monte_carlo_traces(generator, generator_tokenizer, problems[:held_out], separator, sampling,
                                       seed=1)
    labelling_seconds = time.monotonic() - started
    del generator
    tokenizer = models.load_tokenizer(job, "rewardModel")
    model = models.load_reward_model(job, "sft", trainable=True)
    baseline = position_baseline([labelled_steps(t)[1] for t in train_traces],
                                 [labelled_steps(t)[1] for t in validation])
    before = evaluate(model, tokenizer, validation, separator, sft.max_seq_length, baseline)
    dataset = [_example(tokenizer, trace, separator, sft.max_seq_length) for trace in train_traces]
    arguments = training.training_arguments(sft.model_copy(update={"epochs": spec.epochs}), job.stage_plan("sft"),
                                            job.paths.checkpoints("sft", "reward-model-montecarlo"),
                                            job.spec.models.reward_model.dtype, training.on_gpu())
    outcome = _fit(model, tokenizer, dataset, arguments, metrics, stop, progress_span)
    model.eval()
    after = evaluate(model, tokenizer, validation, separator, sft.max_seq_length, baseline)
    for name, value in after.items():
        metrics.accuracy("prm-generator-samples", name, value, step=outcome.steps)
    models.save_trained(model, tokenizer, job.paths.model("reward-model"))
    wrong = sum(not all(labelled_steps(t)[1]) for t in train_traces)
    return {"labels": "montecarlo", "steps": outcome.steps, "final_loss": outcome.final_loss,
            "train_traces": len(train_traces), "train_traces_with_a_wrong_step": wrong,
            "validation_traces": len(validation), "labelling_seconds": labelling_seconds,
            "before": before, "after": after, "checkpoint": str(job.paths.model("reward-model"))}


def _fit(model, tokenizer, dataset, arguments, metrics, stop, progress_span):
    tokenizer.padding_side = "right"
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset,
                      data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE))
    return training.train(trainer, "rewardModel", metrics, stop, progress_span)


def _example(tokenizer, trace: Trace, separator: str, max_tokens: int) -> dict:
    steps, labels = labelled_steps(trace)
    encoded = encode(tokenizer, trace.problem.question, steps, separator, max_tokens)
    targets = [IGNORE] * len(encoded.input_ids)
    for position, label in zip(encoded.positions, labels):
        targets[position] = int(label)
    return {"input_ids": encoded.input_ids, "labels": targets}


def evaluate(model, tokenizer, traces: list[Trace], separator: str, max_tokens: int,
             baseline: list[list[float]] | None = None) -> dict[str, float]:
    """Step accuracy, F1 at finding wrong steps, AUROC of the step scores, AUROC of the trajectory
    score (min over steps); with ``baseline`` (scores per step from position alone), its step AUROC."""
    solutions, labels = [], []
    for trace in traces:
        steps, step_labels = labelled_steps(trace)
        solutions.append((trace.problem.question, steps))
        labels.append(step_labels)
    was_training = model.training
    model.eval()
    scores = score(model, tokenizer, solutions, separator, batch_size=32, max_tokens=max_tokens)
    model.train(was_training)
    pairs = [(p, y) for trace_scores, trace_labels in zip(scores, labels) for p, y in zip(trace_scores, trace_labels)]
    predicted_wrong = [p < 0.5 for p, _ in pairs]
    actually_wrong = [not y for _, y in pairs]
    hits = sum(pw == aw for pw, aw in zip(predicted_wrong, actually_wrong))
    true_positive = sum(pw and aw for pw, aw in zip(predicted_wrong, actually_wrong))
    precision = true_positive / max(sum(predicted_wrong), 1)
    recall = true_positive / max(sum(actually_wrong), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    trajectory_scores = [aggregate(s, "min") for s in scores]
    trajectory_correct = [all(y) for y in labels]
    found = {"step_accuracy": hits / max(len(pairs), 1), "wrong_step_f1": f1,
             "step_auroc": auroc([p for p, _ in pairs], [y for _, y in pairs]),
             "trajectory_auroc": auroc(trajectory_scores, trajectory_correct)}
    if baseline is not None:
        flat = [p for trace_scores, trace_labels in zip(baseline, labels) for p, _ in zip(trace_scores, trace_labels)]
        found["position_baseline_step_auroc"] = auroc(flat, [y for _, y in pairs])
    return found


def auroc(scores: list[float], positives: list[bool]) -> float:
    """Probability that a random correct trajectory outscores a random wrong one (ties count half)."""
    good = [s for s, p in zip(scores, positives) if p]
    bad = [s for s, p in zip(scores, positives) if not p]
    if not good or not bad:
        return float("nan")
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))
