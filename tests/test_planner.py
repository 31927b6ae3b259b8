"""The planner reproduces the reference's GPU table and says what would fit when nothing does."""

import json

import pytest

from reasoning_trainer.planner import PlanError, plan_run
from reasoning_trainer.planner.architectures import architecture_for
from reasoning_trainer.planner.memory import GIB, weight_bytes
from reasoning_trainer.schema import validate_spec
from reasoning_trainer.schema.models import LanguageModelSpec


def plan(preset: str, memory: str, **overrides):
    return plan_run(validate_spec({"preset": preset, **overrides}), memory)


def test_fast_on_24gib_trains_the_prm_on_one_gpu_then_searches_on_one_gpu():
    stages = plan("fast", "24Gi").stages
    assert stages["sft"].gpus == 1
    assert 6 <= stages["sft"].memory_gib <= 11  # reference: ~9 GB
    assert stages["sft"].gradient_checkpointing is True
    assert stages["rl"].gpus == 1
    # Reference: 11-14 GB for a search that reads every path again with the PRM; this one also keeps
    # the PRM's keys and values of every tree (about 1 GiB for a 1.5B PRM at four trees).
    assert 11 <= stages["rl"].memory_gib <= 15
    assert stages["rl"].kv_cache is True
    assert stages["rl"].placement == {"generator": "cuda:0", "rewardModel": "cuda:0", "policy": "cuda:0"}
    assert not any(stages["rl"].load_in_8bit.values())


def test_2gpu_on_24gib_trains_on_one_gpu_then_splits_the_models_over_two():
    stages = plan("2gpu", "24Gi").stages
    assert stages["sft"].gpus == 1
    rl = stages["rl"]
    assert rl.gpus == 2
    assert rl.placement == {"generator": "cuda:0", "rewardModel": "cuda:1", "policy": "cuda:1"}
    # The reference keeps no search-tree cache: compare like with like.
    uncached = plan("2gpu", "24Gi", stages={"rl": {"pgts": {"cacheKv": False}}}).stages["rl"]
    assert 22 <= uncached.total_memory_gib <= 27  # reference: ~22-27 GB over both GPUs
    assert rl.kv_cache and uncached.total_memory_gib < rl.total_memory_gib
    assert not any(rl.load_in_8bit.values())


def test_full_on_24gib_loads_the_generator_in_8bit_over_two_gpus():
    rl = plan("full", "24Gi").stages["rl"]
    assert rl.gpus == 2
    assert rl.load_in_8bit == {"generator": True, "rewardModel": False}
    assert rl.memory_gib <= 24 * 0.92


def test_full_on_80gib_needs_no_8bit():
    stages = plan("full", "80Gi").stages
    assert not any(flag for stage in stages.values() for flag in stage.load_in_8bit.values())
    assert stages["rl"].gpus == 1


def test_search_trees_keep_their_kv_cache_only_where_it_costs_no_search_batch():
    tight, roomy = plan("full", "24Gi").stages["rl"], plan("full", "80Gi").stages["rl"]
    assert (tight.kv_cache, tight.batch_size) == (False, 4)  # 14B trees' caches would halve the batch twice
    assert (roomy.kv_cache, roomy.batch_size) == (True, 4)
    assert roomy.to_dict()["kv_cache"] is True
    off = plan("full", "80Gi", stages={"rl": {"pgts": {"cacheKv": False}}}).stages["rl"]
    assert off.kv_cache is False and off.memory_gib < roomy.memory_gib


def test_bigger_gpus_drop_gradient_checkpointing():
    assert plan("fast", "80Gi").stages["sft"].gradient_checkpointing is False


def test_every_stage_fits_its_gpus():
    for preset in ("fast", "2gpu", "full"):
        for memory, gib in (("24Gi", 24), ("80Gi", 80)):
            for name, stage in plan(preset, memory).stages.items():
                assert stage.memory_gib <= gib * 0.92, (preset, memory, name)


def test_full_fine_tuning_too_big_for_one_gpu_is_sharded_with_zero():
    spec = {"models": {"rewardModel": {"lora": None}}, "stages": {"sft": {"batchSize": 4}}}
    sft = plan("2gpu", "40Gi", **spec).stages["sft"]
    assert sft.gpus > 1
    assert sft.zero_stage in (2, 3)
    assert sft.placement["rewardModel"].endswith("(data parallel)")


def test_pinned_choices_are_respected():
    spec = {"stages": {"sft": {"gradientCheckpointing": True, "gpus": 2, "zeroStage": 3}}}
    sft = plan("fast", "80Gi", **spec).stages["sft"]
    assert (sft.gpus, sft.zero_stage, sft.gradient_checkpointing) == (2, 3, True)


def test_nothing_fits_names_changes_that_would():
    with pytest.raises(PlanError) as caught:
        plan("full", "24Gi", models={"generator": {"loadIn8bit": False}})
    # sft samples the PRM's Monte-Carlo labels from the 14B generator, rl runs it: neither fits in bf16.
    for stage in ("sft", "rl"):
        message = next(line for line in str(caught.value).splitlines() if line.startswith(f"spec.stages.{stage}:"))
        assert "does not fit on 24 GiB GPUs" in message
        assert "models.generator.loadIn8bit: true" in message
        assert "gpu.type: " in message


def test_full_fine_tuning_that_cannot_fit_suggests_lora():
    with pytest.raises(PlanError) as caught:
        plan("full", "24Gi", models={"rewardModel": {"lora": None}}, stages={"sft": {"gpus": 1}})
    assert "models.rewardModel.lora: {r: 16}" in str(caught.value)


def test_cpu_runs_plan_no_gpus():
    stages = plan("tiny", None).stages
    assert all(stage.gpus == 0 for stage in stages.values())
    assert all(device == "cpu" for stage in stages.values() for device in stage.placement.values())


def test_sizes_come_from_a_local_config(tmp_path):
    config = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 512, "vocab_size": 1000, "tie_word_embeddings": True, "model_type": "qwen2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch = architecture_for(LanguageModelSpec.model_validate({"name": str(tmp_path)}))
    assert (arch.layers, arch.hidden, arch.kv_dim, arch.source) == (4, 256, 128, str(tmp_path / "config.json"))


def test_known_models_match_their_published_parameter_counts():
    for name, billions in [("Qwen/Qwen2.5-1.5B-Instruct", 1.54), ("Qwen/Qwen2.5-7B-Instruct", 7.62),
                           ("Qwen/Qwen2.5-14B-Instruct", 14.77), ("meta-llama/Llama-3.1-8B", 8.03)]:
        arch = architecture_for(LanguageModelSpec.model_validate({"name": name}))
        assert arch.parameters / 1e9 == pytest.approx(billions, abs=0.01)


def test_unknown_models_need_a_parameter_count():
    spec = {"preset": "fast", "models": {"generator": {"name": "acme/secret-model"}}}
    with pytest.raises(PlanError) as caught:
        plan_run(validate_spec(spec), "24Gi")
    assert str(caught.value).startswith("spec.models.generator.parameters: cannot tell the size of 'acme/secret-model'")
    spec["models"]["generator"]["parameters"] = "7B"
    assert plan_run(validate_spec(spec), "80Gi").stages["rl"].gpus >= 1


def test_8bit_keeps_embeddings_norms_and_biases_in_16bit_and_lora_training_upcasts_them():
    arch = architecture_for(LanguageModelSpec.model_validate({"name": "Qwen/Qwen2.5-14B-Instruct"}))
    eight = weight_bytes(arch, "bfloat16", True)
    kept = arch.parameters - arch.quantised_parameters
    assert kept > arch.embedding_parameters  # the untied head and embeddings, plus every norm and bias
    assert eight == arch.quantised_parameters + 2 * kept
    assert eight / GIB < weight_bytes(arch, "bfloat16", False) / GIB / 1.7
    # Under LoRA, peft upcasts what is not int8: 2.9 GiB more for this model's embeddings and head.
    assert (weight_bytes(arch, "bfloat16", True, kbit_training=True) - eight) / GIB == pytest.approx(2.9, abs=0.05)


def test_the_prm_is_trained_in_select_when_select_runs_before_sft():
    spec = validate_spec({"preset": "tiny"})
    assert spec.reward_model_trained_in() == "select"
    plan = plan_run(spec)
    assert plan.stages["select"].trains == ["rewardModel"]
    assert plan.stages["sft"].trains == ["generator"]
    without_select = validate_spec({"preset": "tiny", "stages": {"select": {"enabled": False}}})
    assert without_select.reward_model_trained_in() == "sft"
    assert plan_run(without_select).stages["sft"].trains == ["rewardModel", "generator"]


def test_the_generator_is_placed_and_sized_wherever_a_stage_samples_from_it():
    # fast: sft trains the PRM on Monte-Carlo labels of the generator's own solutions.
    sft = plan_run(validate_spec({"preset": "fast", "storage": {"size": "1Ti"}})).stages["sft"]
    assert sft.placement["generator"] == sft.placement["rewardModel"] == "cuda:0"
    # select samples the pool: the generator's weights and its sampling cache must fit, not only the PRM's.
    spec = validate_spec({"preset": "fast", "models": {"generator": {"lora": {"r": 16}}},
                          "data": {"pool": {"source": "hub", "hubId": "openai/gsm8k", "subset": "main"}},
                          "stages": {"select": {"keepFraction": 0.25, "sample": {"samplesPerProblem": 8}},
                                     "sft": {"target": "generator"}}})
    select = plan_run(spec).stages["select"]
    assert select.placement["generator"] == "cuda:0"
    assert "generator kv cache" in select.devices[0].parts
    scoring_only = plan_run(validate_spec({**spec.model_dump(by_alias=True, exclude_none=True), "stages": {
        "select": {"keepFraction": 0.25}, "sft": {"target": "generator"}}})).stages["select"]
    assert "generator" not in scoring_only.placement


@pytest.mark.parametrize("preset", ["fast", "2gpu", "full"])
def test_grpo_is_planned_as_the_one_process_it_is_never_data_parallel(preset):
    spec = validate_spec({"preset": preset, "gpu": {"type": "H100"}, "models": {"generator": {"lora": {"r": 16}}},
                          "stages": {"rl": {"algorithm": "grpo"}, "eval": {"methods": ["pass@1", "rm@k"]}}})
    rl = plan_run(spec).stages["rl"]
    assert rl.zero_stage is None and rl.nodes == 1 and rl.gpus in (1, 2)
    assert not any("data parallel" in where for where in rl.placement.values())
    # The rollout cache holds every sequence of an iteration (problems x group), not one minibatch.
    halved = validate_spec({**spec.model_dump(by_alias=True, exclude_none=True), "stages": {
        **spec.model_dump(by_alias=True, exclude_none=True)["stages"],
        "rl": {**spec.model_dump(by_alias=True, exclude_none=True)["stages"]["rl"],
               "problemsPerIteration": spec.stages.rl.problems_per_iteration // 2}}})
    cache = rl.devices[0].parts["generator kv cache"]
    assert plan_run(halved).stages["rl"].devices[0].parts["generator kv cache"] == pytest.approx(cache / 2)


def test_grpo_asked_for_more_gpus_than_one_process_uses_is_refused_by_field():
    spec = validate_spec({"preset": "fast", "gpu": {"type": "H100"},
                          "stages": {"rl": {"algorithm": "grpo", "gpus": 4}, "eval": {"methods": ["pass@1"]}}})
    with pytest.raises(PlanError, match="spec.stages.rl"):
        plan_run(spec)


def test_the_search_plans_the_prms_tree_cache_only_for_a_prm_that_continues_paths():
    ours = plan("fast", "24Gi").stages["rl"].devices[0].parts
    assert ours["search tree rewardModel kv cache"] > 0.5  # GiB: a 1.5B PRM's keys and values of four trees
    prm = {"name": "Qwen/Qwen2.5-Math-PRM-7B", "stepToken": "<extra_0>"}
    published = plan("fast", "80Gi", models={"rewardModel": prm},
                     stages={"sft": {"target": "generator"}}).stages["rl"].devices
    parts = {name for device in published for name in device.parts}
    # A published PRM's chat template closes the turn after the last step: it reads each path again.
    assert "search tree rewardModel kv cache" not in parts and "rewardModel workspace" in parts
