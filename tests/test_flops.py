"""FLOPs from tokens and model shapes: the textbook 6N for full fine-tuning, about 4N with LoRA,
2N per token for a forward pass, and attention's context term."""

from __future__ import annotations

import pytest

from reasoning_trainer import flops

DENSE = flops.Shape(parameters=1_000_000, trainable=1_000_000, layers=0, hidden=0)


def test_full_fine_tuning_costs_six_flops_per_weight_per_token_and_lora_about_four():
    assert flops.training(DENSE, tokens=100, context=50) == 6 * 1_000_000 * 100
    lora = flops.Shape(parameters=1_000_000, trainable=10_000, layers=0, hidden=0)
    assert flops.training(lora, tokens=100, context=50) == pytest.approx(4.02 * 1_000_000 * 100)
    assert flops.training(DENSE, 100, 50, recompute=True) == 8 * 1_000_000 * 100, "one more forward pass"


def test_a_forward_pass_is_two_flops_per_weight_plus_attention_over_the_context():
    assert flops.forward(DENSE, tokens=10, context=1000) == 2 * 1_000_000 * 10
    attended = flops.Shape(parameters=1_000_000, trainable=0, layers=4, hidden=64)
    assert flops.forward(attended, tokens=10, context=100) == 10 * (2 * 1_000_000 + 4 * 4 * 64 * 100)


def test_generation_reads_the_prompt_once_then_each_new_token_against_what_precedes_it():
    attended = flops.Shape(parameters=1_000, trainable=0, layers=2, hidden=8)
    per_sequence = flops.forward(attended, 20, 10) + flops.forward(attended, 30, 20 + 15)
    assert flops.generation(attended, sequences=3, prompt=20, generated=30) == 3 * per_sequence


def test_a_models_shape_counts_its_weights_and_reads_its_config():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    model.model.embed_tokens.weight.requires_grad_(False)
    shape = flops.Shape.of(model)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert shape.trainable == shape.parameters - 128 * 32
    assert (shape.layers, shape.hidden) == (2, 32)
