"""The process reward model: training on step labels, and scoring solutions step by step.

A solution is encoded once: the prompt, then every step followed by the step separator. The
PRM (a token-classification head on the base model) reads its verdict on each step at the
last token of that step's separator, so one forward pass scores all steps of a solution;
no prefix is ever re-encoded. The final ``#### N`` line is scored as a last step, so the
last score is the PRM's verdict on the outcome.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import torch
from transformers import Trainer

from . import label_sources, models, training
from .checkpoints import StopRequest
from .data.answers import FINAL_MARK
from .data.problems import Trace
from .generation import prompt_ids
from .job import StageJob
from .metrics import StageMetrics
from .prm_labels import position_baseline

IGNORE = -100
LABELLING_SHARE = 0.4


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    positions: list[int]  # index of each scored step's last separator token


def prm_steps(steps, answer: str, answer_format: str = "gsm8k") -> list[str]:
    """What the PRM scores: the reasoning steps, then the ``#### N`` line (its verdict on the outcome).
    A boxed or lettered answer is inside the last step already."""
    return [*steps, f"{FINAL_MARK} {answer}"] if answer_format == "gsm8k" else list(steps)


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


def encode_published(tokenizer, question: str, steps: list[str], step_token: str, step_token_id: int,
                     system_prompt: str, max_tokens: int) -> Encoded:
    """A published PRM's input: the chat with the steps joined by its step token in the assistant turn;
    the scores are read at each step token. Steps past max_tokens are left out."""
    messages = [{"role": "user", "content": question},
                {"role": "assistant", "content": "".join(step + step_token for step in steps)}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    positions = [index for index, token in enumerate(ids) if token == step_token_id]
    kept = [position for position in positions if position < max_tokens]
    return Encoded(ids[: kept[-1] + 1] if kept else ids[:max_tokens], kept)


@torch.no_grad()
def score(model, tokenizer, solutions: list[tuple[str, list[str]]], separator: str, batch_size: int,
          max_tokens: int) -> list[list[float]]:
    """P(step is correct) for every step of every (question, steps) solution."""
    if step_token := getattr(model, "step_token", None):
        encoded = [encode_published(tokenizer, question, steps, step_token, model.step_token_id,
                                    model.system_prompt, max_tokens) for question, steps in solutions]
    else:
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
    """One score of a solution from its steps' scores: min, last, product or mean."""
    if not step_scores:
        return 0.0
    if how == "min":
        return min(step_scores)
    if how == "last":
        return step_scores[-1]
    if how == "product":
        return math.prod(step_scores)
    return sum(step_scores) / len(step_scores)


def labelled_steps(trace: Trace) -> tuple[list[str], list[bool]]:
    """What the PRM scores and each part's label: the steps, then (GSM8K format) the final-answer line,
    right only if every step is and the answer is right."""
    steps = prm_steps(trace.steps, trace.answer, trace.problem.answer_format)
    if len(steps) == len(trace.labels):
        return steps, list(trace.labels)
    return steps, [*trace.labels, all(trace.labels) and trace.correct]


def soft_targets(trace: Trace) -> list[float]:
    """Each scored part's target probability: the Monte-Carlo share where known, else its hard label."""
    steps, labels = labelled_steps(trace)
    shares = list(trace.shares) if trace.shares is not None else [float(label) for label in trace.labels]
    return shares + [float(label) for label in labels[len(shares):]]


def train_reward_model(job: StageJob, stage: str, metrics: StageMetrics, stop: StopRequest,
                       progress_span: tuple[float, float]) -> dict:
    """Train the PRM on the step labels sft.prmLabels names (label_sources.py), judge it before and
    after on held-out generator samples against a position-only baseline, and save it."""
    sft = job.spec.stages.sft
    separator = job.spec.models.reward_model.step_separator
    started = time.monotonic()
    labelled = label_sources.gather(job, stage, metrics)
    labelling_seconds = time.monotonic() - started
    # Labelling (sampling) takes about as long as training on the labels: report it as its share.
    labelled_at = progress_span[0] + LABELLING_SHARE * (progress_span[1] - progress_span[0])
    metrics.progress(labelled_at)
    tokenizer = models.load_tokenizer(job, "rewardModel")
    # From the spec's model even when an earlier attempt saved a trained PRM (a select pod that died
    # after saving it, before its results): training that copy again would not be this run's PRM.
    model = models.load_reward_model(job, stage, trainable=True, fresh=True)
    validation = labelled.validation
    baseline = position_baseline([labelled_steps(t)[1] for t in labelled.train],
                                 [labelled_steps(t)[1] for t in validation])
    before = evaluate(model, tokenizer, validation, separator, sft.max_seq_length, baseline)
    dataset = [_example(tokenizer, trace, separator, sft.max_seq_length, sft.prm_soft_labels)
               for trace in labelled.train]
    epochs = sft.monte_carlo.epochs if "montecarlo" in sft.prm_labels else sft.epochs
    hyper = {"epochs": epochs, "learning_rate": sft.prm_learning_rate or sft.learning_rate}
    arguments = training.training_arguments(sft.model_copy(update=hyper), job.stage_plan(stage),
                                            job.paths.checkpoints(stage, "reward-model"),
                                            job.spec.models.reward_model.dtype, training.on_gpu())
    outcome = _fit(model, tokenizer, dataset, arguments, metrics, stop, (labelled_at, progress_span[1]))
    model.eval()
    after = evaluate(model, tokenizer, validation, separator, sft.max_seq_length, baseline)
    for name, value in after.items():
        metrics.accuracy("prm-validation", name, value, step=outcome.steps)
    models.save_trained(model, tokenizer, job.paths.model("reward-model"))
    return {
        "labels": list(sft.prm_labels), "soft_labels": sft.prm_soft_labels, **labelled.counts,
        "validation": labelled.validation_kind, "labelling_seconds": round(labelling_seconds, 1),
        "steps": outcome.steps, "resumed_from_step": outcome.resumed_from_step, "final_loss": outcome.final_loss,
        "train_traces": len(labelled.train), "validation_traces": len(validation),
        "before": before, "after": after, "checkpoint": str(job.paths.model("reward-model")),
    }


def _fit(model, tokenizer, dataset, arguments, metrics, stop, progress_span):
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset,
                      data_collator=partial(_collate, pad_id=tokenizer.pad_token_id),
                      compute_loss_func=_step_loss)
    return training.train(trainer, "rewardModel", metrics, stop, progress_span)


def _example(tokenizer, trace: Trace, separator: str, max_tokens: int, soft: bool) -> dict:
    steps, labels = labelled_steps(trace)
    encoded = encode(tokenizer, trace.problem.question, steps, separator, max_tokens)
    targets = [float(IGNORE)] * len(encoded.input_ids)
    values = soft_targets(trace) if soft else [float(label) for label in labels]
    for position, value in zip(encoded.positions, values):
        targets[position] = value
    return {"input_ids": encoded.input_ids, "labels": targets}


def _collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and float targets (IGNORE off the scored positions): hard labels are 0.0 / 1.0,
    soft labels the Monte-Carlo share."""
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), float(IGNORE))
    for index, row in enumerate(rows):
        ids[index, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[index, :len(row["input_ids"])] = 1
        labels[index, :len(row["labels"])] = torch.tensor(row["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _step_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of the two-way step head against the target probability of "right" at each
    scored position: with hard targets, the usual classification loss."""
    scored = labels != IGNORE
    logprobs = torch.log_softmax(outputs.logits.float(), dim=-1)[scored]
    target = labels[scored].to(logprobs.dtype)
    losses = -(target * logprobs[:, 1] + (1 - target) * logprobs[:, 0])
    return losses.sum() / (num_items_in_batch if num_items_in_batch else max(len(losses), 1))


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
