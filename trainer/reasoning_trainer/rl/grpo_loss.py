"""GRPO's objective, as DeepSeekMath defines it and as DAPO and Dr. GRPO corrected it.

- ``group_advantages``: reward minus its group's mean; divided by the group's standard deviation
  only when asked (DeepSeekMath does, Dr. GRPO shows it weights low-variance groups up, which turns
  PRM noise of 0.01 in a group that is all right into advantages of +-1). Groups whose answers are
  all right or all wrong carry no correctness signal and are dropped (DAPO's dynamic sampling).
- ``sampling_logprobs``: the log-probability of each sampled token under the distribution it was
  sampled from (temperature, then top-k, then top-p, as transformers' generate applies them), so
  the importance ratio compares like with like.
- ``policy_loss``: the clipped surrogate plus the k3 KL estimator, normalised per ``loss_type``:
  ``grpo`` (each completion's token mean, then the mean over completions: a long wrong answer is
  penalised less per token), ``dapo`` (one mean over every token of the batch), ``dr_grpo`` (the
  token sum over completions x the longest allowed completion: a constant, so no length bias).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def group_advantages(rewards: list[float], correct: list[bool], group: int, scale: bool,
                     drop_uniform: bool) -> list[float | None]:
    """One advantage per rollout, in order; None for a rollout of a dropped group."""
    advantages: list[float | None] = []
    for start in range(0, len(rewards), group):
        values = torch.tensor(rewards[start:start + group], dtype=torch.float64)
        answers = correct[start:start + group]
        if drop_uniform and (all(answers) or not any(answers)):
            advantages += [None] * len(answers)
            continue
        centred = values - values.mean()
        if scale:
            centred = centred / (values.std() + 1e-4)
        advantages += centred.tolist()
    return advantages


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_k: int = 0,
                      top_p: float = 1.0) -> torch.Tensor:
    """log p(token) under the processed distribution; ``logits`` (..., vocab), ``tokens`` (...).

    A token outside the support recomputed here (possible only through numerical differences from
    the sampling pass) gets its temperature-scaled log-probability instead of -inf, so one such
    token cannot turn the ratio into NaN."""
    shape, vocab = tokens.shape, logits.shape[-1]
    flat = logits.reshape(-1, vocab).float()
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    processed = warpers(None, flat.clone())
    chosen = tokens.reshape(-1, 1)
    logprobs = torch.log_softmax(processed, dim=-1).gather(-1, chosen).squeeze(-1)
    scaled = torch.log_softmax(flat / temperature, dim=-1).gather(-1, chosen).squeeze(-1)
    return torch.where(torch.isfinite(logprobs), logprobs, scaled).reshape(shape)


def policy_loss(logprobs: torch.Tensor, old: torch.Tensor, reference: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float, kl_coef: float, loss_type: str,
                max_completion_tokens: int) -> torch.Tensor:
    """``logprobs``, ``old``, ``reference``, ``mask``: (completions, tokens); ``advantages``: (completions,)."""
    ratio = torch.exp(logprobs - old)
    advantage = advantages.unsqueeze(-1)
    surrogate = torch.min(ratio * advantage, torch.clamp(ratio, 1 - clip, 1 + clip) * advantage)
    delta = reference - logprobs
    kl = torch.exp(delta) - delta - 1  # k3: unbiased, never negative
    per_token = (-surrogate + kl_coef * kl) * mask
    if loss_type == "grpo":
        return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dapo":
        return per_token.sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        return per_token.sum() / (mask.shape[0] * max_completion_tokens)
    raise ValueError(f"unknown loss type {loss_type!r}")
