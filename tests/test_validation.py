"""Malformed resources are rejected with a message naming the field path and the fix."""

import pytest

from conftest import resource
from reasoning_trainer.schema import RunValidationError, validate_resource, validate_spec

FAST = {"preset": "fast"}

# (what is wrong, spec, the field path, words the message must contain)
MALFORMED = [
    ("negative learning rate", {**FAST, "stages": {"sft": {"learningRate": -1e-5}}},
     "spec.stages.sft.learningRate", "must be greater than 0"),
    ("zero batch", {**FAST, "stages": {"sft": {"batchSize": 0}}},
     "spec.stages.sft.batchSize", "must be at least 1, got 0"),
    ("8-bit on the policy network", {**FAST, "models": {"policy": {"loadIn8bit": True}}},
     "spec.models.policy", "remove loadIn8bit"),
    ("more GPUs than a node has", {**FAST, "gpu": {"memory": "80Gi", "maxPerNode": 8}, "stages": {"sft": {"gpus": 16}}},
     "spec.stages.sft.gpus", "set nodes: 2"),
    ("a misspelt field", {**FAST, "stages": {"sft": {"learnigRate": 1e-5}}},
     "spec.stages.sft.learnigRate", "did you mean 'learningRate'"),
    ("an unknown algorithm", {**FAST, "stages": {"rl": {"algorithm": "dpo"}}},
     "spec.stages.rl.algorithm", "must be one of 'grpo' or 'pgts'"),
    ("PPO clip above 1", {**FAST, "stages": {"rl": {"ppo": {"clip": 2.0}}}},
     "spec.stages.rl.ppo.clip", "must be at most 1.0, got 2.0"),
    ("both selection rules", {**FAST, "stages": {"select": {"keepTopK": 10, "keepFraction": 0.1}}},
     "spec.stages.select", "exactly one of keepTopK and keepFraction"),
    ("two volumes", {**FAST, "storage": {"existingClaim": "data", "size": "10Gi"}},
     "spec.storage", "exactly one of existingClaim"),
    ("no models and no preset", {"gpu": {"memory": "24Gi"}, "stages": {"sft": {}}},
     "spec.models.generator", "required by stages.sft"),
    ("no GPU size", {"models": {"generator": {"name": "Qwen/Qwen2.5-3B-Instruct"}}, "stages": {"sft": {}}},
     "spec.gpu", "set type"),
    ("full fine-tuning of 8-bit weights",
     {**FAST, "models": {"rewardModel": {"loadIn8bit": True, "lora": None}}},
     "spec.models.rewardModel.loadIn8bit", "add lora"),
    ("pgts decoding without a pgts policy", {**FAST, "stages": {"rl": {"enabled": False}}},
     "spec.stages.eval.methods", "pgts decoding needs the policy"),
    ("a hub dataset without an id", {**FAST, "data": {"train": {"source": "hub", "hubId": None}}},
     "spec.data.train", "needs hubId"),
    ("a GPU memory that is not a quantity", {**FAST, "gpu": {"memory": "24 gigs"}},
     "spec.gpu.memory", "write it like 24Gi"),
    ("heads that do not divide the width", {**FAST, "models": {"policy": {"hiddenSize": 500}}},
     "spec.models.policy", "divisible by heads"),
    ("GPUs split unevenly over nodes", {**FAST, "stages": {"sft": {"gpus": 3, "nodes": 2}}},
     "spec.stages.sft.gpus", "multiple of 2"),
    ("GPUs on a CPU run", {"preset": "tiny", "stages": {"sft": {"gpus": 1}}},
     "spec.stages.sft.gpus", "device is cpu"),
    ("k of 1 for best-of-k", {**FAST, "stages": {"eval": {"k": 1}}},
     "spec.stages.eval", "k of at least 2"),
    ("a string where a number belongs", {**FAST, "stages": {"rl": {"iterations": "many"}}},
     "spec.stages.rl.iterations", "must be a number, not the string 'many'; write it without quotes"),
]


@pytest.mark.parametrize("spec, path, words", [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_malformed_spec_is_rejected_naming_the_field(spec, path, words):
    with pytest.raises(RunValidationError) as caught:
        validate_resource(resource(spec))
    matching = [issue for issue in caught.value.issues if issue.path == path]
    assert matching, f"no issue at {path}: {caught.value}"
    assert any(words in issue.message for issue in matching), str(caught.value)


def test_every_problem_is_reported_at_once():
    spec = {**FAST, "stages": {"sft": {"learningRate": -1, "batchSize": 0}, "rl": {"ppo": {"clip": 3}}}}
    with pytest.raises(RunValidationError) as caught:
        validate_spec(spec)
    assert {issue.path for issue in caught.value.issues} == {
        "spec.stages.sft.learningRate", "spec.stages.sft.batchSize", "spec.stages.rl.ppo.clip"}


def test_resource_envelope_is_checked():
    document = {"apiVersion": "reasoning.dev/v1", "kind": "Job", "metadata": {}, "spec": FAST}
    with pytest.raises(RunValidationError) as caught:
        validate_resource(document)
    assert [issue.path for issue in caught.value.issues] == ["apiVersion", "kind", "metadata.name"]


def test_snake_case_keys_are_not_accepted():
    """The API server would prune them silently; we name them instead."""
    with pytest.raises(RunValidationError) as caught:
        validate_spec({**FAST, "stages": {"sft": {"learning_rate": 1e-5}}})
    assert "did you mean 'learningRate'" in str(caught.value)


def test_a_valid_resource_keeps_its_name():
    name, spec = validate_resource(resource({**FAST, "storage": {"size": "100Gi"}}, name="gsm8k"))
    assert name == "gsm8k"
    assert spec.storage.size == "100Gi"


def test_a_run_can_start_from_an_earlier_runs_trained_generator_on_its_kept_claim():
    """The documented resume: mount the kept claim, name the trained model by its path (with its
    size: the planner cannot read the claim), disable the stages already done."""
    from reasoning_trainer.planner import plan_run

    spec = validate_spec({**FAST, "storage": {"existingClaim": "first-data"},
                          "models": {"generator": {"name": "/data/first-0123abcd/models/generator",
                                                   "parameters": "3B"}},
                          "stages": {"select": {"enabled": False}, "sft": {"enabled": False}}})
    assert list(plan_run(spec).stages) == ["rl", "eval"]
    with pytest.raises(RunValidationError, match="spec.stages.select: set exactly one of keepTopK"):
        validate_spec({**FAST, "stages": {"select": {"enabled": True}}})
