"""PGTS: policy-guided tree search. The generator and the PRM stay frozen; a small graph
transformer learns, with PPO, when to expand a reasoning step, branch to an alternative,
backtrack or stop.

Per iteration: problemsPerIteration problems -> batched tree search (search.py), each action
rewarded with minus its cost, the PRM's potential-based shaping (a difference of step scores, so
growing the tree does not pay), the invalid-action penalty when an expansion produced nothing and,
on the last action, +correct / wrong for the answer of the step it stopped at -> GAE (gamma,
lambda) -> ppo.epochs epochs of clipped PPO over minibatches of batchSize trajectories, the value
head fitting returns in units of the outcome reward, at a learning rate that warms up and decays
linearly to zero over the iterations. The search's accuracy on held-out problems of each benchmark
is measured before, every evalEvery iterations and after training (rl/held_out.py).
"""

from __future__ import annotations

import random

import torch

from .. import flops, models
from ..checkpoints import StopRequest, atomic_dir, is_complete
from ..data.sources import load_problems
from ..job import StageJob
from ..metrics import StageMetrics
from ..schema.stages import PgtsSpec, RlSpec
from ..stage_result import StageResult
from ..training import StageInterrupted
from .policy import TreePolicy, encode
from .ppo import gae, ppo_loss
from .held_out import HeldOut
from .search import Episode, SearchModels, timed_search

HELD_OUT_SEED = 1_000_003


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    rl = job.spec.stages.rl
    searcher = search_models(job, "rl", policy=None)
    torch.manual_seed(0)
    policy = TreePolicy(searcher.generator.config.hidden_size, job.spec.models.policy)
    searcher.policy = policy.to(models.device_for(job, "rl", "policy"))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rl.learning_rate, weight_decay=rl.weight_decay)
    problems = load_problems(job.spec.data.train, "spec.data.train")
    held_out = HeldOut.of(job)
    state_dir = job.paths.checkpoints("rl", "policy") / "latest"
    start, history, held_out.points = _resume(state_dir, policy, optimizer)
    if start == 0 and held_out.problems:
        held_out.record(metrics, 0, search_scores(searcher, job, held_out))
    shapes = {"generator": flops.Shape.of(searcher.generator), "rewardModel": flops.Shape.of(searcher.reward_model)}
    for iteration in range(start, rl.iterations):
        rng = random.Random(iteration)  # a resumed run draws the problems it would have drawn
        batch = [problems[rng.randrange(len(problems))] for _ in range(rl.problems_per_iteration)]
        seeds = [iteration * 1_000_033 + number for number in range(len(batch))]
        episodes, found = timed_search(searcher, planned_limits(job), batch, seeds, gamma=rl.ppo.gamma)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(rl, iteration)
        losses = update(policy, optimizer, episodes, job)
        record = {
            "iteration": iteration + 1, "accuracy": sum(e.correct for e in episodes) / len(episodes),
            "tokens": sum(e.tokens for e in episodes),
            "reward": sum(sum(d.reward for d in e.decisions) for e in episodes) / len(episodes),
            "nodes_per_problem": found.nodes_per_problem, "tokens_per_problem": found.tokens_per_problem,
            "parallelism": found.parallelism, "search_seconds": found.seconds, **losses,
        }
        _count_flops(metrics, shapes, record)
        record["flops"] = metrics.flops_total
        history.append(record)
        _export(metrics, record, found, learning_rate(rl, iteration), rl.iterations)
        if held_out.due(job, iteration + 1):
            held_out.record(metrics, iteration + 1, search_scores(searcher, job, held_out))
        last = iteration + 1 == rl.iterations
        if (iteration + 1) % rl.checkpoint_every == 0 or stop.requested or last:
            _save_state(state_dir, policy, optimizer, iteration + 1, history, held_out.points)
        if stop.requested and not last:
            raise StageInterrupted(f"policy training stopped at iteration {iteration + 1} after SIGTERM")
    if held_out.problems:
        held_out.record(metrics, rl.iterations, search_scores(searcher, job, held_out))
    with atomic_dir(job.paths.model("policy")) as staging:
        policy.save(staging)
    return _result(job, history, held_out, start)


def learning_rate(rl: RlSpec, iteration: int) -> float:
    """The policy's learning rate for ``iteration`` (0-based), the schedule SFT trains with: linear
    warm-up over warmupRatio of the iterations, then linear decay to zero. At a constant rate the
    policy that had learned to branch where the PRM doubts a step drifted in the last iterations,
    to branching everywhere on some seeds (bench/RESULTS.md)."""
    warmup = int(rl.warmup_ratio * rl.iterations)
    if iteration < warmup:
        return rl.learning_rate * (iteration + 1) / warmup
    return rl.learning_rate * (rl.iterations - iteration) / (rl.iterations - warmup)


def search_models(job: StageJob, stage: str, policy: TreePolicy | None) -> SearchModels:
    """The frozen generator and PRM of ``stage`` and, when given, the policy that steers them."""
    generation = job.spec.models.generator.generation
    return SearchModels(
        generator=models.load_generator(job, stage), tokenizer=models.load_tokenizer(job, "generator"),
        reward_model=models.load_reward_model(job, stage), prm_tokenizer=models.load_tokenizer(job, "rewardModel"),
        policy=policy, separator=job.spec.step_separator, max_step_tokens=generation.max_new_tokens,
        max_prompt_tokens=generation.max_prompt_tokens, instruction=generation.instruction)


def search_scores(searcher: SearchModels, job: StageJob, held_out: HeldOut) -> dict[str, dict[str, float]]:
    """The search's accuracy (the policy's most likely actions) and average parallelism on each benchmark's
    held-out problems."""
    scores = {}
    for name, problems in held_out.problems.items():
        seeds = [HELD_OUT_SEED + number for number in range(len(problems))]
        episodes, found = timed_search(searcher, planned_limits(job), problems, seeds, greedy_actions=True)
        scores[name] = {"pgts": sum(e.correct for e in episodes) / len(episodes), "parallelism": found.parallelism}
    return scores


def planned_limits(job: StageJob) -> PgtsSpec:
    """The spec's search limits with what the planner fitted into GPU memory: the search batch (it
    halves the spec's when the models, the trees and the policy would not fit) and whether the
    trees keep their keys and values (not when that would cost search batch)."""
    limits = job.spec.stages.rl.pgts
    planned = job.plan["stages"].get("rl", {})
    if job.spec.stages.rl.algorithm != "pgts" or not planned.get("batch_size"):
        return limits
    return limits.model_copy(update={"search_batch": min(planned["batch_size"], limits.search_batch),
                                     "cache_kv": limits.cache_kv and planned.get("kv_cache") is not False})


def update(policy: TreePolicy, optimizer, episodes: list[Episode], job: StageJob) -> dict[str, float]:
    """PPO epochs over the episodes' decisions, minibatches of batchSize trajectories."""
    rl = job.spec.stages.rl
    ppo = rl.ppo
    trajectories = []
    for episode in episodes:
        advantages, returns = gae([d.reward for d in episode.decisions], [d.value for d in episode.decisions],
                                  ppo.gamma, ppo.gae_lambda)
        trajectories.append([(episode.tree, d, a, r) for d, a, r in zip(episode.decisions, advantages, returns)])
    # The value head learns returns in units of the outcome reward. In reward units (an outcome of
    # 10) its squared error is ~30 and, through the shared layers and the one gradient-norm clip,
    # shrinks the policy's gradient until the policy never learns to read the PRM's score.
    scale = rl.pgts.rewards.outcome_scale
    flat = torch.tensor([a for trajectory in trajectories for _, _, a, _ in trajectory])
    mean, std = flat.mean(), flat.std() if len(flat) > 1 else torch.tensor(1.0)
    device = next(policy.parameters()).device
    order = torch.Generator().manual_seed(len(flat))
    # The same mode the actions were chosen in (search runs the policy in eval mode): with dropout on
    # here, the ratio would be 0.85-1.2 before any update and clipping would cut real gradients.
    policy.eval()
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "loss": 0.0}
    updates = 0
    for _ in range(ppo.epochs):
        shuffled = torch.randperm(len(trajectories), generator=order).tolist()
        for start in range(0, len(shuffled), rl.batch_size):
            items = [item for index in shuffled[start:start + rl.batch_size] for item in trajectories[index]]
            logits, values = policy(encode([(tree, decision.state) for tree, decision, _, _ in items], device))
            logps = torch.log_softmax(logits, -1)
            # Masked actions have log-probability -inf; zero them before multiplying, or their
            # 0 * inf would turn the gradient into NaN.
            finite = logps.masked_fill(~torch.isfinite(logps), 0.0)
            entropy = -(logps.exp() * finite).sum(-1)
            actions = torch.tensor([decision.action for _, decision, _, _ in items], device=device)
            loss = ppo_loss(
                logps.gather(-1, actions.unsqueeze(-1)).squeeze(-1),
                torch.tensor([decision.logprob for _, decision, _, _ in items], device=device),
                ((torch.tensor([a for _, _, a, _ in items]) - mean) / (std + 1e-8)).to(device),
                values, torch.tensor([r / scale for _, _, _, r in items], device=device), entropy,
                ppo.clip, ppo.value_coef, ppo.entropy_coef)
            optimizer.zero_grad()
            loss.total.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), ppo.max_grad_norm)
            optimizer.step()
            totals["policy_loss"] += loss.policy
            totals["value_loss"] += loss.value
            totals["entropy"] += loss.entropy
            totals["loss"] += loss.total.item()
            updates += 1
    policy.eval()
    return {key: value / max(updates, 1) for key, value in totals.items()}


def _count_flops(metrics: StageMetrics, shapes: dict[str, flops.Shape], record: dict) -> None:
    """One iteration's search: the generator writes each step's tokens and the PRM scores them,
    each token attending to at most its problem's tree so far (an upper bound on its path). The
    policy network's FLOPs are left out: under a millionth of these."""
    tokens, context = record["tokens"], record["tokens_per_problem"]
    for role, shape in shapes.items():
        metrics.flops(role, flops.forward(shape, tokens, context))


def _export(metrics: StageMetrics, record: dict, found, rate: float, iterations: int) -> None:
    step = record["iteration"]
    metrics.step("policy", found.seconds, record["tokens"], step)
    metrics.loss("policy", step, record["loss"], rate)
    metrics.reward("policy", record["reward"], step)
    metrics.accuracy("rollouts", "train", record["accuracy"], step=step)
    metrics.search(record["parallelism"], record["nodes_per_problem"], record["tokens_per_problem"])
    metrics.ppo("policy", record["policy_loss"], record["value_loss"], record["entropy"])
    metrics.progress(step / iterations)


def _result(job: StageJob, history: list[dict], held_out: HeldOut, start: int) -> StageResult:
    result = StageResult(checkpoint=str(job.paths.model("policy")))
    if held_out.problems:
        before, after = held_out.points[0][held_out.first], held_out.points[-1][held_out.first]
        result.accuracy = after["pgts"]
        result.metrics["held_out_accuracy_before"] = before["pgts"]
        result.metrics["held_out_accuracy_after"] = after["pgts"]
    if history:
        last = history[-1]
        result.metrics.update({"first_reward": history[0]["reward"], "final_reward": last["reward"],
                               "final_rollout_accuracy": last["accuracy"], "nodes_per_problem": last["nodes_per_problem"],
                               "tokens_per_problem": last["tokens_per_problem"], "parallelism": last["parallelism"]})
    result.details = {"algorithm": "pgts", "resumed_from_iteration": start or None, "iterations": history,
                      "evaluations": held_out.points}
    return result


def _save_state(folder, policy, optimizer, iteration: int, history: list[dict], evaluations: list[dict]) -> None:
    with atomic_dir(folder) as staging:
        torch.save({"iteration": iteration, "policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                    "history": history, "evaluations": evaluations}, staging / "state.pt")


def _resume(folder, policy, optimizer) -> tuple[int, list[dict], list[dict]]:
    if not is_complete(folder):
        return 0, [], []
    state = torch.load(folder / "state.pt", weights_only=False)
    policy.restore(state["policy"], folder)
    optimizer.load_state_dict(state["optimizer"])
    return state["iteration"], state["history"], state.get("evaluations", [])
