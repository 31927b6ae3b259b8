"""Presets reproduce the PGTS reference configurations and merge under a user's spec."""

import pytest

from reasoning_trainer import presets
from reasoning_trainer.schema import RunValidationError, validate_spec


@pytest.mark.parametrize("name", ["tiny", "fast", "2gpu", "full"])
def test_every_preset_validates(name):
    spec = validate_spec({"preset": name})
    assert spec.preset == name
    assert spec.enabled_stages()


# (preset, generator, reward model, PRM batch, accumulation, PPO batch, iterations, problems/iteration,
#  depth, nodes) from the reference's model_config_*.yaml and training_config*.yaml
REFERENCE = [
    ("fast", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", 16, 1, 8, 50, 32, 12, 60),
    ("2gpu", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-3B-Instruct", 8, 2, 4, 100, 16, 15, 80),
    ("full", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-7B-Instruct", 16, 1, 8, 100, 32, 20, 100),
]


@pytest.mark.parametrize("name, generator, reward_model, prm_batch, accumulation, ppo_batch, "
                         "iterations, problems, depth, nodes", REFERENCE)
def test_presets_match_the_reference(name, generator, reward_model, prm_batch, accumulation, ppo_batch,
                                     iterations, problems, depth, nodes):
    spec = validate_spec({"preset": name})
    models, sft, rl = spec.models, spec.stages.sft, spec.stages.rl
    assert (models.generator.name, models.reward_model.name) == (generator, reward_model)
    assert (models.policy.hidden_size, models.policy.layers, models.policy.heads) == (512, 4, 8)
    assert sft.target == "reward-model"
    assert (sft.batch_size, sft.gradient_accumulation_steps) == (prm_batch, accumulation)
    assert (sft.learning_rate, sft.epochs, sft.warmup_ratio, sft.weight_decay) == (2e-5, 3, 0.1, 0.01)
    assert (sft.max_examples, sft.incorrect_per_problem, sft.max_seq_length) == (50000, 3, 512)
    assert rl.algorithm == "pgts"
    assert (rl.batch_size, rl.learning_rate, rl.iterations, rl.problems_per_iteration) == \
        (ppo_batch, 1e-5, iterations, problems)
    ppo = rl.ppo
    assert (ppo.epochs, ppo.clip, ppo.value_coef, ppo.entropy_coef, ppo.gae_lambda, ppo.gamma,
            ppo.max_grad_norm) == (4, 0.2, 0.5, 0.01, 0.95, 0.99, 1.0)
    assert (rl.pgts.max_depth, rl.pgts.max_nodes, rl.pgts.temperature) == (depth, nodes, 0.8)
    rewards = rl.pgts.rewards
    assert (rewards.correct, rewards.wrong) == (10.0, -5.0)
    costs = rewards.action_costs
    assert (costs.expand, costs.branch, costs.backtrack, costs.terminate) == (0.1, 0.2, 0.5, 0.0)
    generation = models.generator.generation
    assert (generation.max_new_tokens, generation.temperature, generation.top_p) == (128, 0.7, 0.95)


def test_fast_keeps_the_reference_prm_reward_calibration():
    rewards = validate_spec({"preset": "fast"}).stages.rl.pgts.rewards
    assert (rewards.prm_scale, rewards.outcome_weight, rewards.prm_weight) == (0.5, 0.7, 0.3)


def test_tiny_runs_on_cpu_with_embedded_models_and_data():
    spec = validate_spec({"preset": "tiny"})
    assert spec.device == "cpu"
    assert spec.models.generator.embedded and spec.models.reward_model.embedded
    assert spec.data.train.source == "embedded"
    assert spec.enabled_stages() == ["select", "sft", "rl", "eval"]


def test_user_fields_override_the_preset_and_the_rest_is_kept():
    spec = validate_spec({"preset": "fast", "stages": {"rl": {"iterations": 5, "pgts": {"maxDepth": 20}}}})
    assert spec.stages.rl.iterations == 5
    assert spec.stages.rl.pgts.max_depth == 20
    assert spec.stages.rl.pgts.max_nodes == 60  # from the preset, next to the overridden key
    assert spec.stages.sft.batch_size == 16


def test_naming_a_gpu_type_replaces_the_presets_gpu_memory():
    from reasoning_trainer.planner import plan_run

    on_h100 = validate_spec({"preset": "fast", "gpu": {"type": "H100"}})
    assert plan_run(on_h100).gpu_memory_gib == 80
    pinned = validate_spec({"preset": "fast", "gpu": {"type": "H100", "memory": "40Gi"}})
    assert plan_run(pinned).gpu_memory_gib == 40
    assert plan_run(validate_spec({"preset": "fast"})).gpu_memory_gib == 24


def test_override_is_validated_after_merging():
    with pytest.raises(RunValidationError) as caught:
        validate_spec({"preset": "fast", "stages": {"rl": {"pgts": {"maxNodes": 5}}}})
    assert "spec.stages.rl.pgts" in str(caught.value)
    assert "maxNodes (5) is below maxDepth (12)" in str(caught.value)


def test_lists_replace_rather_than_merge():
    spec = validate_spec({"preset": "fast", "stages": {"eval": {"methods": ["pass@1"]}}})
    assert spec.stages.eval.methods == ["pass@1"]


def test_deep_merge_does_not_touch_its_inputs():
    base, override = {"a": {"b": 1, "c": [1]}}, {"a": {"b": 2}}
    assert presets.deep_merge(base, override) == {"a": {"b": 2, "c": [1]}}
    assert base == {"a": {"b": 1, "c": [1]}}


def test_unknown_preset_lists_the_choices():
    with pytest.raises(RunValidationError) as caught:
        validate_spec({"preset": "fsat"})
    assert str(caught.value) == "spec.preset: unknown preset 'fsat'; choose one of: 2gpu, fast, full, tiny"
