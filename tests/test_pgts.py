"""PGTS: the PPO formulas, the tree's actions and masks, batched search, and the rl stage."""

import json
import math

import pytest
import torch

from reasoning_trainer import prm, train
from reasoning_trainer.data.sources import load_problems
from reasoning_trainer.job import load_job
from reasoning_trainer.rl import pgts
from reasoning_trainer.rl.policy import TreePolicy
from reasoning_trainer.rl.ppo import gae, ppo_loss
from reasoning_trainer.rl.search import search
from reasoning_trainer.rl.tree import BRANCH, EXPAND, TERMINATE, Tree

FEATURE = torch.zeros(8)
PGTS = {"stages": {"select": {"enabled": False}, "sft": {"enabled": False},
                   "rl": {"enabled": True, "algorithm": "pgts", "iterations": 2, "problemsPerIteration": 4,
                          "batchSize": 2, "checkpointEvery": 1, "learningRate": 1e-3,
                          "pgts": {"maxDepth": 4, "maxNodes": 8, "searchBatch": 4}},
                   "eval": {"methods": ["pass@1", "pgts"]}},
        "models": {"policy": {"hiddenSize": 32, "layers": 2, "heads": 4, "dropout": 0.1}}}


def test_gae_matches_the_hand_computed_recursion():
    advantages, returns = gae([1.0, 0.0, 2.0], [0.5, 0.2, 0.1], gamma=0.9, lam=0.8)
    # delta2 = 2 - 0.1 = 1.9; delta1 = 0.9*0.1 - 0.2 = -0.11; delta0 = 1 + 0.9*0.2 - 0.5 = 0.68
    # A1 = -0.11 + 0.72*1.9 = 1.258; A0 = 0.68 + 0.72*1.258 = 1.58576
    assert advantages == pytest.approx([1.58576, 1.258, 1.9])
    assert returns == pytest.approx([2.08576, 1.458, 2.0])


def test_ppo_loss_clips_the_ratio_and_weighs_value_and_entropy():
    loss = ppo_loss(torch.log(torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.25, 0.4])),
                    torch.tensor([1.0, -1.0]), torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]),
                    torch.tensor([0.5, 1.5]), clip=0.2, value_coef=0.5, entropy_coef=0.01)
    # ratios 2.0 and 0.5: surrogates min(2, 1.2) = 1.2 and min(-0.5, -0.8) = -0.8 -> policy -0.2;
    # value (1 + 4) / 2 = 2.5; entropy 1.0; total -0.2 + 1.25 - 0.01
    assert loss.policy == pytest.approx(-0.2)
    assert loss.value == pytest.approx(2.5)
    assert loss.entropy == pytest.approx(1.0)
    assert loss.total.item() == pytest.approx(1.04)


def test_the_value_head_learns_returns_in_units_of_the_outcome_reward():
    """In reward units (a right answer pays 10) the value loss swamped the policy's gradient under the
    shared gradient-norm clip, and the trained policy ignored the PRM's score."""
    from types import SimpleNamespace

    from reasoning_trainer.data.problems import Problem
    from reasoning_trainer.rl.search import Decision, Episode
    from reasoning_trainer.schema.models import PolicyNetworkSpec
    from reasoning_trainer.schema.stages import RlSpec

    rl = RlSpec.model_validate({"algorithm": "pgts", "batchSize": 1, "ppo": {"epochs": 1}})
    policy = TreePolicy(FEATURE.shape[0], PolicyNetworkSpec(hiddenSize=16, layers=1, heads=2))
    torch.nn.init.zeros_(policy.value_head[-1].weight)
    torch.nn.init.zeros_(policy.value_head[-1].bias)  # the head predicts 0 everywhere
    t = tree()
    at_root = t.state()
    t.add_step(0, "#### 4", 0.9, FEATURE)
    # Expand (cost 0.1), then terminate at the right answer (+10); both recorded values 0.
    decisions = [Decision(at_root, EXPAND, 0.0, 0.0, -0.1), Decision(t.state(), TERMINATE, 0.0, 0.0, 10.0)]
    episode = Episode(Problem("q", "4"), t, decisions)
    job = SimpleNamespace(spec=SimpleNamespace(stages=SimpleNamespace(rl=rl)))
    losses = pgts.update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), [episode], job)
    # GAE (gamma 0.99, lambda 0.95): returns 10 and -0.1 + 0.99 x 0.95 x 10 = 9.305, over the outcome
    # scale 10: the value loss is the mean of 1.0^2 and 0.9305^2 over the two one-decision minibatches.
    assert rl.pgts.rewards.outcome_scale == 10.0
    assert losses["value_loss"] == pytest.approx((1.0 + 0.9305 ** 2) / 2, rel=1e-4)


def test_the_policy_learning_rate_warms_up_then_decays_to_zero_as_sft_does():
    from reasoning_trainer.schema.stages import RlSpec

    flat = RlSpec.model_validate({"iterations": 4, "learningRate": 1e-3})
    assert [pgts.learning_rate(flat, i) for i in range(4)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    warm = flat.model_copy(update={"warmup_ratio": 0.5})
    assert [pgts.learning_rate(warm, i) for i in range(4)] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])


def tree(max_depth=3, max_nodes=6) -> Tree:
    return Tree.start("q", FEATURE, max_depth, max_nodes)


def test_the_root_allows_only_expand():
    assert tree().mask() == [True, False, False, False]


def test_max_depth_a_full_tree_and_an_answer_mask_what_cannot_happen():
    deep = tree(max_depth=2)
    deep.add_step(0, "a", 0.5, FEATURE)
    deep.add_step(1, "b", 0.5, FEATURE)
    assert deep.mask() == [False, True, True, False], "no answer here: terminate is not allowed"
    full = tree(max_nodes=2)
    full.add_step(0, "a", 0.5, FEATURE)
    assert full.mask() == [False, False, True, False]
    full.backtrack()
    assert full.mask() == [False, False, False, True], "nothing else left: a stop without an answer"
    answered = tree()
    answered.add_step(0, "#### 4", 0.9, FEATURE)
    assert answered.mask() == [False, True, True, True]


def test_branch_adds_a_sibling_of_the_current_step_and_backtrack_returns_to_the_parent():
    t = tree()
    first = t.add_step(t.parent_for(EXPAND), "a", 0.5, FEATURE)
    child = t.add_step(t.parent_for(EXPAND), "b", 0.5, FEATURE)
    sibling = t.add_step(t.parent_for(BRANCH), "c", 0.5, FEATURE)
    assert t.nodes[sibling].parent == t.nodes[child].parent == first
    assert t.current == sibling and t.steps() == ["a", "c"]
    t.backtrack()
    assert t.current == first
    assert sorted(t.leaves()) == [child, sibling]


def test_the_answer_is_the_one_of_the_step_the_policy_terminated_at():
    t = tree(max_depth=5, max_nodes=10)
    a = t.add_step(0, "x = 3", 0.9, FEATURE)
    t.add_step(a, "#### 7", 0.9, FEATURE)  # the better-scored answer elsewhere in the tree
    b = t.add_step(0, "y = 4", 0.6, FEATURE)
    t.add_step(b, "#### 8", 0.6, FEATURE)
    assert t.final_answer() == "8"
    unfinished = tree()
    unfinished.add_step(0, "3 + 4 = 7", 0.5, FEATURE)
    assert unfinished.final_answer() is None, "no answer step reached: no answer"


@pytest.fixture
def searcher(plan_file):
    job = load_job(plan_file(PGTS))
    models = pgts.search_models(job, "rl", policy=None)
    torch.manual_seed(3)
    models.policy = TreePolicy(models.generator.config.hidden_size, job.spec.models.policy)
    return job, models


def test_batched_search_grows_the_same_trees_as_one_problem_at_a_time(searcher):
    job, models = searcher
    problems = load_problems(job.spec.data.train, "spec.data.train")[:4]
    seeds = [11, 12, 13, 14]
    together = search(models, job.spec.stages.rl.pgts, problems, seeds)
    alone = [search(models, job.spec.stages.rl.pgts, [problem], [seed])[0] for problem, seed in zip(problems, seeds)]
    for batched, single in zip(together, alone):
        assert [(n.parent, n.text) for n in batched.tree.nodes] == [(n.parent, n.text) for n in single.tree.nodes]
        assert [d.action for d in batched.decisions] == [d.action for d in single.decisions]
        assert [d.reward for d in batched.decisions] == pytest.approx([d.reward for d in single.decisions], abs=1e-4)
    assert any(len(e.tree.nodes) > 1 for e in together), "the searches should have generated steps"


def test_continuing_each_path_from_its_cache_grows_the_trees_that_re_encoding_grows(searcher):
    job, models = searcher
    limits = job.spec.stages.rl.pgts
    problems = load_problems(job.spec.data.train, "spec.data.train")[:4]
    seeds = [21, 22, 23, 24]
    cached = search(models, limits, problems, seeds)
    encoded = search(models, limits.model_copy(update={"cache_kv": False}), problems, seeds)
    for fast, slow in zip(cached, encoded):
        assert [(n.parent, n.text, n.tokens) for n in fast.tree.nodes] == \
            [(n.parent, n.text, n.tokens) for n in slow.tree.nodes]
        assert [d.action for d in fast.decisions] == [d.action for d in slow.decisions]
        for kept, recomputed in zip(fast.tree.nodes, slow.tree.nodes):
            torch.testing.assert_close(kept.feature, recomputed.feature, atol=1e-4, rtol=1e-4)
            # The PRM scored the step after its path's cache as it scores the whole solution read anew.
            assert kept.score == pytest.approx(recomputed.score, abs=1e-5)
        assert not fast.kv and not fast.prm_kv, "a finished tree gives its caches back"
    assert max(node.depth for e in cached for node in e.tree.nodes) >= 2, "some step continued a cached path"
    # And the cached scores are the ones prm.score gives each whole solution, the way select and eval read it.
    tree = cached[0].tree
    deepest = max(range(1, len(tree.nodes)), key=lambda index: tree.nodes[index].depth)
    [whole] = prm.score(models.reward_model, models.prm_tokenizer, [(tree.question, tree.steps(deepest))],
                        models.separator, 1, 4096)
    assert whole[-1] == pytest.approx(tree.nodes[deepest].score, abs=1e-5)


class _ExpandThenTerminate(torch.nn.Module):
    """A policy that expands wherever it may and terminates otherwise: it never branches."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        preference = torch.tensor([2.0, 0.0, 0.0, 1.0])
        logits = preference.expand(batch["action_mask"].shape).masked_fill(~batch["action_mask"], float("-inf"))
        return logits, torch.zeros(len(logits))


def test_a_policy_that_only_expands_finds_the_greedy_solution_and_branches_are_samples(searcher):
    from reasoning_trainer.data.problems import split_solution
    from reasoning_trainer.generation import solve

    job, models = searcher
    limits = job.spec.stages.rl.pgts.model_copy(update={"max_depth": 6, "max_nodes": 12})
    problems = load_problems(job.spec.data.train, "spec.data.train")[:6]
    greedy = solve(models.generator, models.tokenizer, [p.question for p in problems], 1, 64,
                   job.spec.models.generator.generation.max_prompt_tokens, 0.0, 1.0, len(problems))
    models.policy = _ExpandThenTerminate()
    for episode, [text] in zip(search(models, limits, problems, list(range(6)), greedy_actions=True), greedy):
        steps, answer = split_solution(text, models.separator)
        if len(steps) < limits.max_depth:
            assert episode.tree.steps() == [*steps, f"#### {answer}"]
            assert episode.answer == answer
    # With greedyFirstStep off, every step is a sample at the search temperature: some paths differ.
    sampled = search(models, limits.model_copy(update={"greedy_first_step": False, "temperature": 1.5}), problems,
                     list(range(6)), greedy_actions=True)
    assert any(e.tree.steps()[:-1] != split_solution(text, models.separator)[0] for e, [text] in zip(sampled, greedy))


def test_the_search_uses_the_batch_and_cache_the_planner_fitted(plan_file):
    import dataclasses

    job = load_job(plan_file(PGTS))
    assert (pgts.planned_limits(job).search_batch, pgts.planned_limits(job).cache_kv) == (4, True)
    stages = {**job.plan["stages"], "rl": {**job.plan["stages"]["rl"], "batch_size": 2, "kv_cache": False}}
    short = dataclasses.replace(job, plan={**job.plan, "stages": stages})
    assert (pgts.planned_limits(short).search_batch, pgts.planned_limits(short).cache_kv) == (2, False)


def test_growing_the_tree_does_not_pay_rewards_sum_to_the_outcome_minus_the_action_costs(searcher):
    job, models = searcher
    limits = job.spec.stages.rl.pgts
    problems = load_problems(job.spec.data.train, "spec.data.train")[:4]
    rewards = limits.rewards
    costs = rewards.action_costs
    for episode in search(models, limits, problems, [1, 2, 3, 4], gamma=1.0):
        assert len(episode.tree.nodes) <= limits.max_nodes
        assert max(node.depth for node in episode.tree.nodes) <= limits.max_depth
        sizes = [d.state.size for d in episode.decisions] + [len(episode.tree.nodes)]
        failed = sum(1 for d, after in zip(episode.decisions, sizes[1:])
                     if d.action in (EXPAND, BRANCH) and after == d.state.size)
        paid = sum((costs.expand, costs.branch, costs.backtrack, costs.terminate)[d.action]
                   for d in episode.decisions)
        outcome = rewards.outcome_weight * (rewards.correct if episode.correct else rewards.wrong)
        # The PRM shaping is a difference of potentials: it telescopes to nothing over the episode,
        # whatever the tree's size (the old per-node PRM reward paid for every step added).
        total = sum(d.reward for d in episode.decisions)
        assert total == pytest.approx(outcome - paid + failed * rewards.invalid_action, abs=1e-5)
        for decision in episode.decisions:
            assert decision.state.mask[decision.action], "a masked action was taken"
        last = episode.decisions[-1]
        if last.action == TERMINATE:  # at an answer step, and that step's answer; or forced, with none
            assert episode.answer == episode.tree.nodes[episode.tree.current].answer
            assert episode.answer is not None or last.state.mask == (False, False, False, True)
        assert all(math.isfinite(d.logprob) for d in episode.decisions)


def test_the_rl_stage_trains_the_policy_resumes_and_eval_scores_pgts(plan_file):
    path = plan_file({**PGTS, "stages": {**PGTS["stages"], "rl": {**PGTS["stages"]["rl"], "iterations": 1}}})
    assert train.main("rl", str(path), metrics_port=0) == 0
    job = load_job(path)
    first = torch.load(job.paths.checkpoints("rl", "policy") / "latest" / "state.pt", weights_only=False)
    assert first["iteration"] == 1
    # A second run with more iterations resumes from the saved state instead of starting over.
    (job.paths.results("rl")).unlink()
    path = plan_file(PGTS)
    assert train.main("rl", str(path), metrics_port=0) == 0
    results = json.loads(job.paths.results("rl").read_text())
    assert results["details"]["resumed_from_iteration"] == 1
    iterations = results["details"]["iterations"]
    assert [step["iteration"] for step in iterations] == [1, 2]
    assert all(math.isfinite(step["loss"]) and step["entropy"] > 0 for step in iterations)
    assert {"held_out_accuracy_before", "held_out_accuracy_after", "nodes_per_problem",
            "parallelism"} <= set(results["metrics"])
    assert results["flops"]["generator"] > 0 and results["flops"]["rewardModel"] > 0
    saved = TreePolicy.load(job.paths.model("policy"), torch.device("cpu"))
    torch.manual_seed(0)  # the stage's initialisation
    fresh = TreePolicy(saved.feature_size, job.spec.models.policy)
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), fresh.state_dict().values()))
    assert train.main("eval", str(path), metrics_port=0) == 0
    evaluation = json.loads(job.paths.results("eval").read_text())
    assert {"arithmetic/pass@1", "arithmetic/pgts"} <= set(evaluation["metrics"])
    cost = evaluation["details"]["arithmetic"]["cost"]  # what the search spends against greedy decoding
    assert cost["greedyTokensPerProblem"] > 0 and cost["pgtsTokensPerProblem"] > 0 and cost["pgtsParallelism"] >= 1


def test_a_policy_saved_for_another_network_shape_is_refused_with_the_folder_and_the_fix(tmp_path):
    from reasoning_trainer.schema.models import PolicyNetworkSpec

    spec = PolicyNetworkSpec(hiddenSize=16, layers=1, heads=2)
    old = TreePolicy(FEATURE.shape[0], spec)
    old.policy_head[0] = torch.nn.Linear(32, 16)  # the heads before they read the current step's score
    old.save(tmp_path / "policy")
    with pytest.raises(ValueError, match=r"policy: this PGTS policy was saved for another network shape.*"
                                         r"remove .*policy and run the rl stage again"):
        TreePolicy.load(tmp_path / "policy", torch.device("cpu"))


def test_edge_messages_equal_the_per_edge_sum_without_a_nodes_squared_by_width_tensor():
    from reasoning_trainer.rl.policy import GraphTransformerLayer, encode

    torch.manual_seed(0)
    layer = GraphTransformerLayer(16, 2, 0.0, "gelu")
    t = tree(max_depth=4, max_nodes=8)
    first = t.add_step(0, "a", 0.9, FEATURE)
    t.add_step(first, "b", 0.4, FEATURE)
    t.add_step(first, "c", 0.7, FEATURE)
    batch = encode([(t, t.state())], torch.device("cpu"))
    # What the dense version computed: for each node, the sum over its neighbours (itself included,
    # with a zero edge) of edge(e_ij), e_ij = (child's score, child's depth / max depth).
    expected = torch.zeros(len(t.nodes), 16)
    for i in range(len(t.nodes)):
        neighbours = [i] + [j for j, node in enumerate(t.nodes) if node.parent == i]
        if t.nodes[i].parent is not None:
            neighbours.append(t.nodes[i].parent)
        for j in neighbours:
            child = t.nodes[max(i, j)] if i != j else None
            edge = torch.tensor([child.score, child.depth / t.max_depth]) if child else torch.zeros(2)
            expected[i] += layer.edge(edge)
    degree = batch["adjacency"][0].sum(-1, keepdim=True)
    found = batch["edge_sums"][0] @ layer.edge.weight.T + degree * layer.edge.bias
    assert torch.allclose(found, expected, atol=1e-5)
    assert batch["edge_sums"].shape == (1, len(t.nodes), 2)
