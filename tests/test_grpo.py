"""GRPO's objective against values computed by hand (rl/grpo_loss.py)."""

import math

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from reasoning_trainer.rl.grpo_loss import group_advantages, policy_loss, sampling_logprobs


def test_advantages_are_centred_in_each_group_and_scaled_only_when_asked():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.2, 1.0, 0.0, 1.0]
    correct = [True, False, False, True, True, True, False, True]
    plain = group_advantages(rewards, correct, group=4, scale=False, drop_uniform=True)
    assert plain[:4] == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert plain[4:] == pytest.approx([0.4, 0.2, -0.8, 0.2])
    scaled = group_advantages(rewards, correct, group=4, scale=True, drop_uniform=True)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, as DeepSeekMath's
    assert scaled[0] == pytest.approx(0.5 / (std + 1e-4))


def test_a_group_all_right_or_all_wrong_is_dropped_and_its_prm_noise_never_becomes_an_advantage():
    rewards = [1.49, 1.50, 1.51, 0.01, 0.02, 0.0]  # PRM noise on top of all-right, then all-wrong
    correct = [True, True, True, False, False, False]
    assert group_advantages(rewards, correct, 3, scale=True, drop_uniform=True) == [None] * 6
    kept = group_advantages(rewards, correct, 3, scale=True, drop_uniform=False)
    assert abs(kept[0]) > 0.9, "what dropping prevents: std scaling turns 0.01 of noise into ~1"


def test_log_probs_follow_the_sampling_temperature_and_nucleus():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    tokens = torch.randint(0, 11, (3, 5))
    hot = sampling_logprobs(logits, tokens, temperature=0.7)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(hot, expected, atol=1e-6)
    assert not torch.allclose(hot, torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
    # Inside the nucleus: renormalised over the kept tokens, as generate() samples them.
    flat = logits.reshape(-1, 11)
    kept = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.8)])(None, flat.clone())
    best = kept.argmax(-1).reshape(3, 5)
    nucleus = sampling_logprobs(logits, best, temperature=0.7, top_p=0.8)
    assert torch.allclose(nucleus, torch.log_softmax(kept, -1).gather(-1, best.reshape(-1, 1)).reshape(3, 5))
    assert (nucleus >= hot.new_tensor(-50)).all() and (nucleus.exp() <= 1).all()
    # A token outside the nucleus falls back to its temperature log-probability instead of -inf.
    worst = kept.argmin(-1).reshape(3, 5)
    assert torch.isfinite(sampling_logprobs(logits, worst, temperature=0.7, top_p=0.8)).all()


def _loss(logprobs, old, advantages, mask, loss_type, kl_coef=0.0, reference=None, clip=0.2, max_tokens=4):
    logprobs = torch.tensor(logprobs, requires_grad=True)
    reference = torch.tensor(reference) if reference is not None else logprobs.detach()
    value = policy_loss(logprobs, torch.tensor(old), reference, torch.tensor(advantages), torch.tensor(mask),
                        clip, kl_coef, loss_type, max_tokens)
    value.backward()
    return value.item(), logprobs.grad


def test_loss_normalisation_per_loss_type_with_padding_masked_out():
    # At the old policy (ratio 1) the surrogate per token is the advantage; padding must not count.
    logprobs, mask = [[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    advantages = [1.0, -1.0]
    grpo, _ = _loss(logprobs, logprobs, advantages, mask, "grpo")
    assert grpo == pytest.approx(-(1.0 + -1.0) / 2)  # per-completion means (1, -1), then their mean
    dapo, _ = _loss(logprobs, logprobs, advantages, mask, "dapo")
    assert dapo == pytest.approx(-(3 * 1.0 - 1.0) / 4)  # one mean over the 4 real tokens
    dr, _ = _loss(logprobs, logprobs, advantages, mask, "dr_grpo", max_tokens=4)
    assert dr == pytest.approx(-(3 * 1.0 - 1.0) / (2 * 4))  # a constant: completions x max tokens
    _, gradient = _loss(logprobs, logprobs, advantages, mask, "dapo")
    assert gradient[1, 1:].abs().sum() == 0, "padding gets no gradient"


def test_the_ratio_is_clipped_only_on_the_side_that_would_overshoot():
    old = [[0.0]]
    beyond = [[math.log(1.5)]]  # ratio 1.5 > 1 + clip
    value, gradient = _loss(beyond, old, [1.0], [[1.0]], "dapo")
    assert value == pytest.approx(-1.2) and gradient.abs().sum() == 0, "positive advantage: capped at 1.2"
    value, gradient = _loss(beyond, old, [-1.0], [[1.0]], "dapo")
    assert value == pytest.approx(1.5) and gradient.abs().sum() > 0, "negative advantage: the unclipped term"


def test_the_kl_penalty_is_the_k3_estimator():
    delta = 0.3  # reference - current log-probability
    value, _ = _loss([[0.0]], [[0.0]], [0.0], [[1.0]], "dapo", kl_coef=2.0, reference=[[delta]])
    assert value == pytest.approx(2.0 * (math.exp(delta) - delta - 1))
    same, _ = _loss([[0.0]], [[0.0]], [0.0], [[1.0]], "dapo", kl_coef=2.0, reference=[[0.0]])
    assert same == 0
