"""PPO's two formulas, kept apart so tests can check them against hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns of one finished episode (no bootstrap after it).

    A_t = sum_k (gamma * lam)^k * delta_{t+k}, delta_t = r_t + gamma * V_{t+1} - V_t; returns = A + V.
    """
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        following = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * following - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values)]


@dataclass
class PpoLoss:
    total: torch.Tensor
    policy: float
    value: float
    entropy: float


def ppo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             values: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor,
             clip: float, value_coef: float, entropy_coef: float) -> PpoLoss:
    """Clipped surrogate + value_coef * squared value error - entropy_coef * entropy (all means).
    ``old_logprobs``, ``advantages`` and ``returns`` must come detached from the rollout."""
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    policy = -surrogate.mean()
    value = (values - returns).pow(2).mean()
    bonus = entropy.mean()
    total = policy + value_coef * value - entropy_coef * bonus
    return PpoLoss(total, policy.item(), value.item(), bonus.item())
