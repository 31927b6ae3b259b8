"""Pretraining of the embedded tiny model: what a hub model brings to post-training.

A hub model arrives knowing arithmetic; a randomly initialised one does not, and a PRM
cannot learn to spot a wrong sum from a few labels per solution when its base has never
seen a right one. So the embedded model is first trained as a plain language model on
arithmetic facts ("13 + 2 = 15"), with no questions and no chat format: it knows the
facts, not the task. Post-training starts from it exactly as it would from a hub model.
It is built once per run (deterministically) and kept in ``<outputDir>/models/base``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, get_cosine_schedule_with_warmup

from .checkpoints import atomic_dir
from .data.embedded import MAX_OPERAND, MAX_VALUE
from .planner.architectures import Architecture

log = logging.getLogger(__name__)

SEED = 1234
SEQUENCES, FACTS_PER_SEQUENCE, BATCH, EPOCHS, LEARNING_RATE, WARMUP = 2000, 6, 16, 3, 1e-3, 50


def arithmetic_facts() -> list[str]:
    facts = []
    for left in range(MAX_VALUE + 1):
        for right in range(1, MAX_OPERAND + 1):
            if left + right <= MAX_VALUE:
                facts.append(f"{left} + {right} = {left + right}")
            if left - right >= 0:
                facts.append(f"{left} - {right} = {left - right}")
    return facts


def build_base(arch: Architecture, tokenizer, separator: str, target: Path) -> Path:
    """Pretrain the embedded model on arithmetic facts and save it (with its tokenizer) at target."""
    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=arch.vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, intermediate_size=arch.intermediate,
        tie_word_embeddings=arch.tied_embeddings, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    batches = _batches(tokenizer, separator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    # Warm-up and gradient clipping matter here: without them the facts take ten times longer.
    schedule = get_cosine_schedule_with_warmup(optimizer, WARMUP, len(batches) * EPOCHS)
    model.train()
    for epoch in range(EPOCHS):
        for batch in batches:
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        log.info("embedded base pretraining: epoch %d/%d, loss %.3f", epoch + 1, EPOCHS, loss.item())
    with atomic_dir(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def _batches(tokenizer, separator: str) -> list[torch.Tensor]:
    rng = random.Random(SEED)
    facts = arithmetic_facts()
    # Equal-length rows (every fact is whole tokens and ends with the separator) need no padding.
    rows = [tokenizer(separator.join(rng.sample(facts, FACTS_PER_SEQUENCE)) + separator,
                      add_special_tokens=False)["input_ids"] for _ in range(SEQUENCES)]
    width = min(len(row) for row in rows)
    tensor = torch.tensor([row[:width] for row in rows])
    return list(tensor.split(BATCH))
