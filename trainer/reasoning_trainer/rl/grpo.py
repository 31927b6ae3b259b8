"""GRPO: group relative policy optimisation of the generator with PRM rewards
(ReasonFlux-PRM's RL recipe, DeepSeekMath's estimator).

Per iteration: take problemsPerIteration problems -> sample numGenerations solutions each ->
reward = correctnessWeight x (answer right) + prmWeight x (PRM score of the weakest step) ->
advantage = reward standardised within its problem's group -> one pass of clipped
policy-gradient updates in minibatches of batchSize, with a KL penalty (k3 estimator) to the
reference policy (the model before RL; the adapters switched off when training LoRA).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from .. import models, prm
from ..checkpoints import StopRequest, atomic_dir, is_complete
from ..data.problems import answers_match, split_solution
from ..data.sources import load_problems
from ..generation import left_padded, prompt_ids
from ..job import StageJob
from ..metrics import StageMetrics
from ..stage_result import StageResult
from ..training import StageInterrupted

PRM_AGGREGATE = "min"


@dataclass
class Rollout:
    prompt: list[int]
    completion: list[int]
    reward: float
    correct: bool
    advantage: float = 0.0
    old_logprob: torch.Tensor | None = None
    reference_logprob: torch.Tensor | None = None


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    rl = job.spec.stages.rl
    tokenizer = models.load_tokenizer(job, "generator")
    policy = models.load_generator(job, "rl", trainable=True)
    reference = None
    if rl.grpo.kl_coef > 0 and not hasattr(policy, "peft_config"):
        reference = models.load_generator(job, "rl")  # frozen copy of the model before RL
    reward_model = models.load_reward_model(job, "rl") if rl.grpo.prm_weight > 0 else None
    prm_tokenizer = models.load_tokenizer(job, "rewardModel") if reward_model is not None else None
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad],
                                  lr=rl.learning_rate, weight_decay=rl.weight_decay)
    problems = load_problems(job.spec.data.train, "spec.data.train")
    state_dir = job.paths.checkpoints("rl", "generator") / "latest"
    start = _resume(state_dir, policy, optimizer)
    history = []
    for iteration in range(start, rl.iterations):
        started = time.monotonic()
        rng = random.Random(iteration)  # a resumed run draws the same problems it would have
        batch = [problems[rng.randrange(len(problems))] for _ in range(rl.problems_per_iteration)]
        with _autocast(job):
            rollouts = _rollouts(job, policy, tokenizer, batch, reward_model, prm_tokenizer)
            loss = _update(job, policy, reference, optimizer, rollouts)
        reward = sum(r.reward for r in rollouts) / len(rollouts)
        accuracy = sum(r.correct for r in rollouts) / len(rollouts)
        tokens = sum(len(r.completion) for r in rollouts)
        metrics.step("generator", time.monotonic() - started, tokens, iteration + 1)
        metrics.loss("generator", iteration + 1, loss, rl.learning_rate)
        metrics.reward("generator", reward, iteration + 1)
        metrics.accuracy("rollouts", "train", accuracy, step=iteration + 1)
        metrics.progress((iteration + 1) / rl.iterations)
        history.append({"iteration": iteration + 1, "reward": reward, "accuracy": accuracy, "loss": loss})
        last = iteration + 1 == rl.iterations
        if (iteration + 1) % rl.checkpoint_every == 0 or stop.requested or last:
            _save_state(state_dir, policy, optimizer, iteration + 1)
        if stop.requested and not last:
            raise StageInterrupted(f"generator training stopped at step {iteration + 1} after SIGTERM")
    models.save_trained(policy, tokenizer, job.paths.model("generator"))
    result = StageResult(checkpoint=str(job.paths.model("generator")))
    if history:
        result.accuracy = history[-1]["accuracy"]
        result.metrics = {"first_reward": history[0]["reward"], "final_reward": history[-1]["reward"],
                          "first_rollout_accuracy": history[0]["accuracy"],
                          "final_rollout_accuracy": history[-1]["accuracy"]}
    result.details = {"algorithm": "grpo", "resumed_from_iteration": start or None, "iterations": history}
    return result


@torch.no_grad()
def _rollouts(job, policy, tokenizer, problems, reward_model, prm_tokenizer) -> list[Rollout]:
    rl, generation = job.spec.stages.rl, job.spec.models.generator.generation
    group = rl.grpo.num_generations
    policy.eval()
    device = next(policy.parameters()).device
    prompts = [prompt_ids(tokenizer, p.question, generation.instruction)[-generation.max_prompt_tokens:]
               for p in problems]
    ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    width = ids.shape[1]
    generated = policy.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                temperature=generation.temperature, top_p=generation.top_p,
                                max_new_tokens=rl.grpo.max_completion_tokens, num_return_sequences=group,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    policy.train()
    rollouts, separator = [], job.spec.step_separator
    for index, row in enumerate(generated[:, width:].tolist()):
        problem, prompt = problems[index // group], prompts[index // group]
        completion = _until_eos(row, tokenizer)
        steps, answer = split_solution(tokenizer.decode(completion, skip_special_tokens=True), separator)
        correct = answers_match(answer, problem.answer)
        rollouts.append(Rollout(prompt, completion, rl.grpo.correctness_weight * correct, correct))
    if reward_model is not None:
        texts = [split_solution(tokenizer.decode(r.completion, skip_special_tokens=True), separator) for r in rollouts]
        solutions = [(problems[i // group].question, prm.prm_steps(steps, answer or ""))
                     for i, (steps, answer) in enumerate(texts)]
        scores = prm.score(reward_model, prm_tokenizer, solutions, separator, rl.batch_size * group, 4096)
        for rollout, step_scores in zip(rollouts, scores):
            rollout.reward += rl.grpo.prm_weight * prm.aggregate(step_scores, PRM_AGGREGATE)
    for start in range(0, len(rollouts), group):
        members = rollouts[start:start + group]
        rewards = torch.tensor([r.reward for r in members])
        normalised = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
        for rollout, advantage in zip(members, normalised.tolist()):
            rollout.advantage = advantage
    return rollouts


def _until_eos(row: list[int], tokenizer) -> list[int]:
    """The sampled tokens up to and including the first end-of-turn (padding after it dropped)."""
    if tokenizer.eos_token_id in row:
        return row[: row.index(tokenizer.eos_token_id) + 1]
    return [token for token in row if token != tokenizer.pad_token_id]


def _update(job, policy, reference, optimizer, rollouts: list[Rollout]) -> float:
    rl = job.spec.stages.rl
    learning = [r for r in rollouts if r.advantage != 0.0 and r.completion]
    if not learning:
        return 0.0  # every group scored alike: no signal this iteration
    with torch.no_grad():
        for chunk in _chunks(learning, rl.batch_size):
            old = _logprobs(policy, chunk)
            ref = _reference_logprobs(policy, reference, chunk) if rl.grpo.kl_coef > 0 else old
            for rollout, o, r in zip(chunk, old, ref):
                rollout.old_logprob, rollout.reference_logprob = o, r
    total = 0.0
    for chunk in _chunks(learning, rl.batch_size):
        losses = []
        for rollout, logprob in zip(chunk, _logprobs(policy, chunk)):
            ratio = torch.exp(logprob - rollout.old_logprob)
            clipped = torch.clamp(ratio, 1 - rl.grpo.clip, 1 + rl.grpo.clip)
            surrogate = torch.min(ratio * rollout.advantage, clipped * rollout.advantage)
            delta = rollout.reference_logprob - logprob
            kl = torch.exp(delta) - delta - 1  # k3: unbiased, always >= 0
            losses.append((-surrogate + rl.grpo.kl_coef * kl).mean())
        loss = torch.stack(losses).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), rl.ppo.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        total += loss.item() * len(chunk)
    return total / len(learning)


def _logprobs(model, rollouts: list[Rollout]) -> list[torch.Tensor]:
    """Log-probability of each completion token under model (right-padded batch)."""
    device = next(model.parameters()).device
    sequences = [r.prompt + r.completion for r in rollouts]
    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
    return [logprobs[row, len(r.prompt) - 1: len(r.prompt) - 1 + len(r.completion)]
            for row, r in enumerate(rollouts)]


def _reference_logprobs(policy, reference, rollouts):
    if reference is not None:
        return _logprobs(reference, rollouts)
    with policy.disable_adapter():  # LoRA: the base model is the reference
        return _logprobs(policy, rollouts)


def _autocast(job: StageJob):
    """Mixed precision on GPU (fp32 master weights, 16-bit compute); plain fp32 on CPU."""
    dtype = getattr(torch, job.spec.models.generator.dtype)
    enabled = torch.cuda.is_available() and dtype != torch.float32
    return torch.autocast("cuda" if enabled else "cpu", dtype=dtype, enabled=enabled)


def _chunks(items, size):
    return [items[start:start + size] for start in range(0, len(items), size)]


def _save_state(folder, policy, optimizer, iteration: int) -> None:
    with atomic_dir(folder) as staging:
        trainable = {name: p.detach().cpu() for name, p in policy.named_parameters() if p.requires_grad}
        torch.save({"iteration": iteration, "parameters": trainable, "optimizer": optimizer.state_dict()},
                   staging / "state.pt")


def _resume(folder, policy, optimizer) -> int:
    if not is_complete(folder):
        return 0
    state = torch.load(folder / "state.pt", weights_only=True)
    parameters = dict(policy.named_parameters())
    with torch.no_grad():
        for name, value in state["parameters"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return state["iteration"]
