"""GRPO: group relative policy optimisation of the generator with PRM rewards
(ReasonFlux-PRM's RL recipe, DeepSeekMath's estimator).

Per iteration: take problemsPerIteration problems -> sample numGenerations solutions each ->
reward = correctnessWeight x (answer right) + prmWeight x (PRM score, prmAggregate: the weakest step) ->
advantage = reward minus its group's mean (divided by the group's std with scaleRewards), groups
all right or all wrong dropped -> one pass of clipped policy-gradient updates in minibatches of
batchSize, log-probabilities taken under the sampling distribution (temperature, top-p), with a
KL penalty (k3 estimator) to the reference policy (the model before RL; the adapters switched off
when training LoRA), normalised per lossType (rl/grpo_loss.py). Greedy pass@1 (and RM@k) on
evalProblems held-out problems of each benchmark before, every evalEvery iterations and after
(rl/held_out.py); the first benchmark's pass@1 after is the stage's accuracy: rollout accuracy is
not held out.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from .. import flops, models, prm
from ..checkpoints import StopRequest, atomic_dir, is_complete
from ..data.problems import split_solution
from ..data.sources import load_problems
from ..generation import left_padded, prompt_ids
from ..job import StageJob
from ..metrics import StageMetrics
from ..stage_result import StageResult
from ..training import StageInterrupted
from .grpo_loss import group_advantages, policy_loss, sampling_logprobs
from .held_out import HeldOut, generator_scores


@dataclass
class Rollout:
    prompt: list[int]
    completion: list[int]
    reward: float
    correct: bool
    advantage: float | None = None  # None: its group was dropped
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
    held_out = HeldOut.of(job)
    start, held_out.points = _resume(state_dir, policy, optimizer)
    if start == 0 and held_out.problems:
        held_out.record(metrics, 0, generator_scores(job, held_out, policy, tokenizer, reward_model, prm_tokenizer))
    shapes = {role: flops.Shape.of(model) for role, model in
              (("generator", policy), ("reference", reference), ("rewardModel", reward_model)) if model is not None}
    history = []
    for iteration in range(start, rl.iterations):
        started = time.monotonic()
        rng = random.Random(iteration)  # a resumed run draws the same problems and samples it would have
        batch = [problems[rng.randrange(len(problems))] for _ in range(rl.problems_per_iteration)]
        torch.manual_seed(iteration)
        with _autocast(job):
            rollouts = _rollouts(job, policy, tokenizer, batch, reward_model, prm_tokenizer)
            loss = _update(job, policy, reference, optimizer, rollouts)
        reward = sum(r.reward for r in rollouts) / len(rollouts)
        accuracy = sum(r.correct for r in rollouts) / len(rollouts)
        tokens = sum(len(r.completion) for r in rollouts)
        metrics.step("generator", time.monotonic() - started, tokens, iteration + 1)
        _count_flops(metrics, shapes, rollouts)
        metrics.loss("generator", iteration + 1, loss, rl.learning_rate)
        metrics.reward("generator", reward, iteration + 1)
        metrics.accuracy("rollouts", "train", accuracy, step=iteration + 1)
        metrics.progress((iteration + 1) / rl.iterations)
        history.append({"iteration": iteration + 1, "reward": reward, "accuracy": accuracy, "loss": loss,
                        "flops": metrics.flops_total})
        if held_out.due(job, iteration + 1):
            held_out.record(metrics, iteration + 1,
                            generator_scores(job, held_out, policy, tokenizer, reward_model, prm_tokenizer))
        last = iteration + 1 == rl.iterations
        if (iteration + 1) % rl.checkpoint_every == 0 or stop.requested or last:
            _save_state(state_dir, policy, optimizer, iteration + 1, held_out.points)
        if stop.requested and not last:
            raise StageInterrupted(f"generator training stopped at step {iteration + 1} after SIGTERM")
    models.save_trained(policy, tokenizer, job.paths.model("generator"))
    result = StageResult(checkpoint=str(job.paths.model("generator")))
    if held_out.problems:
        before = held_out.points[0]
        after = held_out.record(metrics, rl.iterations,
                                generator_scores(job, held_out, policy, tokenizer, reward_model, prm_tokenizer))
        result.accuracy = after[held_out.first]["pass@1"]
        result.metrics["held_out_accuracy_before"] = before[held_out.first]["pass@1"]
        result.metrics["held_out_accuracy_after"] = result.accuracy
        if "rm@k" in after[held_out.first]:
            result.metrics["held_out_rm_at_k_before"] = before[held_out.first]["rm@k"]
            result.metrics["held_out_rm_at_k_after"] = after[held_out.first]["rm@k"]
    if history:
        result.metrics.update(first_reward=history[0]["reward"], final_reward=history[-1]["reward"],
                              first_rollout_accuracy=history[0]["accuracy"],
                              final_rollout_accuracy=history[-1]["accuracy"])
    result.details = {"algorithm": "grpo", "resumed_from_iteration": start or None, "iterations": history,
                      "held_out_problems": {name: len(found) for name, found in held_out.problems.items()},
                      "evaluations": held_out.points}
    return result


def _count_flops(metrics: StageMetrics, shapes: dict[str, flops.Shape], rollouts: list[Rollout]) -> None:
    """One iteration: sampling the rollouts, the update's forward and backward over them, the
    reference's forward, and the PRM scoring them (its tokens counted as the generator's)."""
    count = len(rollouts)
    prompt = sum(len(r.prompt) for r in rollouts) / count
    completion = sum(len(r.completion) for r in rollouts) / count
    tokens, context = count * (prompt + completion), (prompt + completion) / 2
    generator = shapes["generator"]
    metrics.flops("generator", flops.generation(generator, count, prompt, completion)
                  + flops.training(generator, tokens, context))
    if "reference" in shapes:
        metrics.flops("generator", flops.forward(shapes["reference"], tokens, context))
    if "rewardModel" in shapes:
        metrics.flops("rewardModel", flops.forward(shapes["rewardModel"], tokens, context))


def _rollouts(job, policy, tokenizer, problems, reward_model, prm_tokenizer) -> list[Rollout]:
    rl, generation = job.spec.stages.rl, job.spec.models.generator.generation
    group = rl.grpo.num_generations
    policy.eval()
    device = next(policy.parameters()).device
    prompts = [prompt_ids(tokenizer, p.question, generation.instruction)[-generation.max_prompt_tokens:]
               for p in problems]
    ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    width = ids.shape[1]
    # top_k=0: no top-k beside top-p, whatever the model's generation_config says, so that
    # sampling_logprobs recomputes exactly this distribution.
    generated = policy.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                temperature=generation.temperature, top_p=generation.top_p, top_k=0,
                                max_new_tokens=rl.grpo.max_completion_tokens, num_return_sequences=group,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    policy.train()
    rollouts, separator = [], job.spec.step_separator
    for index, row in enumerate(generated[:, width:].tolist()):
        problem, prompt = problems[index // group], prompts[index // group]
        completion = _until_eos(row, tokenizer)
        steps, answer = split_solution(tokenizer.decode(completion, skip_special_tokens=True), separator,
                                       problem.answer_format)
        correct = problem.solved_by(answer)
        rollouts.append(Rollout(prompt, completion, rl.grpo.correctness_weight * correct, correct))
    if reward_model is not None:
        formats = [problems[i // group].answer_format for i in range(len(rollouts))]
        texts = [split_solution(tokenizer.decode(r.completion, skip_special_tokens=True), separator, answer_format)
                 for r, answer_format in zip(rollouts, formats)]
        solutions = [(problems[i // group].question, prm.prm_steps(steps, answer or "", formats[i]))
                     for i, (steps, answer) in enumerate(texts)]
        scores = prm.score(reward_model, prm_tokenizer, solutions, separator, rl.batch_size * group, 4096)
        for rollout, step_scores in zip(rollouts, scores):
            rollout.reward += rl.grpo.prm_weight * prm.aggregate(step_scores, rl.grpo.prm_aggregate)
    advantages = group_advantages([r.reward for r in rollouts], [r.correct for r in rollouts], group,
                                  rl.grpo.scale_rewards, rl.grpo.drop_uniform_groups)
    for rollout, advantage in zip(rollouts, advantages):
        rollout.advantage = advantage
    return rollouts


def _until_eos(row: list[int], tokenizer) -> list[int]:
    """The sampled tokens up to and including the first end-of-turn (padding after it dropped)."""
    if tokenizer.eos_token_id in row:
        return row[: row.index(tokenizer.eos_token_id) + 1]
    return [token for token in row if token != tokenizer.pad_token_id]


def _update(job, policy, reference, optimizer, rollouts: list[Rollout]) -> float:
    rl, generation = job.spec.stages.rl, job.spec.models.generator.generation
    learning = [r for r in rollouts if r.advantage is not None and r.completion]
    if not learning:
        return 0.0  # every group was all right or all wrong: no signal this iteration
    sampling = (generation.temperature, generation.top_p)
    with torch.no_grad():
        for chunk in _chunks(learning, rl.batch_size):
            old = _logprobs(policy, chunk, *sampling)
            ref = _reference_logprobs(policy, reference, chunk, sampling) if rl.grpo.kl_coef > 0 else old
            for rollout, o, r in zip(chunk, old, ref):
                rollout.old_logprob, rollout.reference_logprob = o, r
    total = 0.0
    for chunk in _chunks(learning, rl.batch_size):
        logprobs, mask = _padded(_logprobs(policy, chunk, *sampling))
        old, _ = _padded([r.old_logprob for r in chunk])
        ref, _ = _padded([r.reference_logprob for r in chunk])
        advantages = torch.tensor([r.advantage for r in chunk], dtype=logprobs.dtype, device=logprobs.device)
        loss = policy_loss(logprobs, old, ref, advantages, mask, rl.grpo.clip, rl.grpo.kl_coef, rl.grpo.loss_type,
                           rl.grpo.max_completion_tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), rl.ppo.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        total += loss.item() * len(chunk)
    return total / len(learning)


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(completions, longest) values and the mask of real tokens."""
    width = max(len(row) for row in rows)
    values = torch.zeros((len(rows), width), dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros_like(values)
    for index, row in enumerate(rows):
        values[index, :len(row)] = row
        mask[index, :len(row)] = 1
    return values, mask


def _logprobs(model, rollouts: list[Rollout], temperature: float, top_p: float) -> list[torch.Tensor]:
    """Log-probability of each completion token under the distribution it was sampled from."""
    device = next(model.parameters()).device
    sequences = [r.prompt + r.completion for r in rollouts]
    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    logprobs = sampling_logprobs(logits[:, :-1], ids[:, 1:].to(device), temperature, top_p=top_p)
    return [logprobs[row, len(r.prompt) - 1: len(r.prompt) - 1 + len(r.completion)]
            for row, r in enumerate(rollouts)]


def _reference_logprobs(policy, reference, rollouts, sampling):
    if reference is not None:
        return _logprobs(reference, rollouts, *sampling)
    with policy.disable_adapter():  # LoRA: the base model is the reference
        return _logprobs(policy, rollouts, *sampling)


def _autocast(job: StageJob):
    """Mixed precision on GPU (fp32 master weights, 16-bit compute); plain fp32 on CPU."""
    dtype = getattr(torch, job.spec.models.generator.dtype)
    enabled = torch.cuda.is_available() and dtype != torch.float32
    return torch.autocast("cuda" if enabled else "cpu", dtype=dtype, enabled=enabled)


def _chunks(items, size):
    return [items[start:start + size] for start in range(0, len(items), size)]


def _save_state(folder, policy, optimizer, iteration: int, evaluations: list[dict]) -> None:
    with atomic_dir(folder) as staging:
        trainable = {name: p.detach().cpu() for name, p in policy.named_parameters() if p.requires_grad}
        torch.save({"iteration": iteration, "parameters": trainable, "optimizer": optimizer.state_dict(),
                    "evaluations": evaluations}, staging / "state.pt")


def _resume(folder, policy, optimizer) -> tuple[int, list[dict]]:
    """The iteration to go on from and the held-out evaluations made so far (the first: before RL)."""
    if not is_complete(folder):
        return 0, []
    state = torch.load(folder / "state.pt", weights_only=True)
    parameters = dict(policy.named_parameters())
    with torch.no_grad():
        for name, value in state["parameters"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return state["iteration"], state.get("evaluations", [])
