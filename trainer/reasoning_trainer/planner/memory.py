"""The memory model: bytes a stage needs on one GPU, component by component.

Every formula is written out in docs/planner.md; the constants below are the ones
that measurement tunes (bench/RESULTS.md records predicted against measured peaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .architectures import Architecture

GIB = 2**30

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
INT8_BYTES = 1

# Trainable parameter state under mixed precision: 16-bit weight and gradient plus an
# fp32 master copy and two fp32 Adam moments (2 + 2 + 4 + 4 + 4). LoRA adapters are
# kept in fp32 (weight 4 + grad 4 + moments 8), which is the same 16 bytes.
TRAINABLE_BYTES = {"adamw": 16, "adamw-8bit": 10}
OPTIMIZER_SHARDABLE_BYTES = {"adamw": 12, "adamw-8bit": 6}

# Saved activations of one decoder layer per token, in bytes, with SDPA/flash attention
# (no sequence-squared term): coefficients of hidden size, key/value width and MLP width.
# Qwen2's RMSNorm upcasts to fp32, which is why the hidden coefficient is above 12.
ACT_HIDDEN, ACT_KV, ACT_MLP = 16, 4, 8
# LoRA dropout keeps a copy of each adapted layer's input.
LORA_ACT_HIDDEN, LORA_ACT_MLP = 12, 2
# Language-model head in training: bf16 logits, their fp32 upcast for the loss and the
# fp32 gradient, per token per vocabulary entry.
LOGIT_BYTES = 10
# Allocator slack on top of live tensors, and what a process holds outside them (CUDA
# context, cuBLAS workspaces, blocks cached by the allocator). Fitted on an H100 against
# 24 measured training and generation steps (bench/RESULTS.md): mean error 9%.
FRAGMENTATION = 1.10
RUNTIME_OVERHEAD_GIB = 1.75
# A CPU stage process before its tensors: Python, torch, transformers, peft and DeepSpeed loaded
# (0.38 GiB right after the imports) plus the allocator's arenas. Fitted on the tiny run's four
# stages on 2 cores against their peak RSS (bench/RESULTS.md): every stage within 25%.
CPU_RUNTIME_OVERHEAD_GIB = 0.50


@dataclass
class Estimate:
    """Named components in GiB for one device; ``total`` includes runtime overhead."""

    parts: dict[str, float] = field(default_factory=dict)
    overhead_gib: float = RUNTIME_OVERHEAD_GIB  # what the process holds outside these parts

    def add(self, name: str, nbytes: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + nbytes / GIB

    def merged(self, other: Estimate) -> Estimate:
        combined = Estimate(dict(self.parts), self.overhead_gib)
        for name, gib in other.parts.items():
            combined.parts[name] = combined.parts.get(name, 0.0) + gib
        return combined

    @property
    def total(self) -> float:
        return sum(self.parts.values()) * FRAGMENTATION + self.overhead_gib


def weight_bytes(arch: Architecture, dtype: str, load_in_8bit: bool, kbit_training: bool = False) -> float:
    """8-bit quantises the linear layers' weights; embeddings, the output head, norms and biases stay
    in ``dtype``, or in fp32 under ``kbit_training`` (LoRA on an 8-bit base: peft's
    prepare_model_for_kbit_training upcasts every weight that is not int8)."""
    if not load_in_8bit:
        return arch.parameters * DTYPE_BYTES[dtype]
    quantised = arch.quantised_parameters
    kept = DTYPE_BYTES["float32"] if kbit_training else DTYPE_BYTES[dtype]
    return quantised * INT8_BYTES + (arch.parameters - quantised) * kept


def layer_activation_bytes(arch: Architecture, lora: bool) -> float:
    """Saved activations of one decoder layer for one token."""
    per_token = ACT_HIDDEN * arch.hidden + ACT_KV * arch.kv_dim + ACT_MLP * arch.intermediate
    if lora:
        per_token += LORA_ACT_HIDDEN * arch.hidden + LORA_ACT_MLP * arch.intermediate
    return per_token


@dataclass(frozen=True)
class TrainingSetup:
    arch: Architecture
    dtype: str
    load_in_8bit: bool
    lora_rank: int | None
    lora_targets: tuple[str, ...]
    optimizer: str
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    zero_stage: int
    gpus: int
    lm_head: bool  # causal LM loss over the vocabulary (False for the PRM's step head)


def training_estimate(setup: TrainingSetup, role: str) -> Estimate:
    arch, n = setup.arch, max(setup.gpus, 1)
    estimate = Estimate()
    if setup.lora_rank:
        trainable = arch.lora_parameters(setup.lora_rank, list(setup.lora_targets))
        frozen = weight_bytes(arch, setup.dtype, setup.load_in_8bit, kbit_training=True)
        estimate.add(f"{role} weights", frozen / n if setup.zero_stage == 3 else frozen)
    else:
        trainable = arch.parameters
    state = TRAINABLE_BYTES[setup.optimizer]
    shardable = OPTIMIZER_SHARDABLE_BYTES[setup.optimizer]
    if setup.zero_stage == 0:
        per_param = state
    elif setup.zero_stage == 1:
        per_param = state - shardable + shardable / n
    elif setup.zero_stage == 2:
        per_param = (state - shardable - 2) + (shardable + 2) / n
    else:
        per_param = state / n
    estimate.add(f"{role} trainable state", trainable * per_param)
    tokens = setup.micro_batch * setup.seq_len
    layer = layer_activation_bytes(arch, bool(setup.lora_rank))
    if setup.gradient_checkpointing:
        saved = arch.layers * 2 * arch.hidden + layer
    else:
        saved = arch.layers * layer
    estimate.add(f"{role} activations", tokens * saved)
    if setup.lm_head:
        estimate.add(f"{role} logits", tokens * arch.vocab * LOGIT_BYTES)
    return estimate


def inference_weights(arch: Architecture, dtype: str, load_in_8bit: bool, role: str) -> Estimate:
    estimate = Estimate()
    estimate.add(f"{role} weights", weight_bytes(arch, dtype, load_in_8bit))
    return estimate


def kv_cache_bytes(arch: Architecture, sequences: int, tokens_per_sequence: int, dtype: str = "bfloat16") -> float:
    return 2 * arch.layers * arch.kv_dim * DTYPE_BYTES[dtype] * sequences * tokens_per_sequence


def forward_workspace_bytes(arch: Architecture, tokens: int, dtype: str = "bfloat16") -> float:
    """Transient tensors of one layer's forward pass (no grad) over ``tokens`` tokens."""
    return tokens * (4 * arch.hidden + 2 * arch.intermediate) * DTYPE_BYTES[dtype]


def attention_scores_bytes(arch: Architecture, sequences: int, tokens: int) -> float:
    """One layer's attention scores over a prompt, as the CPU computes them (every query against every
    key, in fp32); a GPU's fused kernels never hold them."""
    return sequences * arch.heads * tokens * tokens * DTYPE_BYTES["float32"]


def policy_network_bytes(hidden: int, layers: int, input_dim: int, nodes: int) -> float:
    """The PGTS graph transformer: trained in fp32 with Adam; activations over one tree batch."""
    parameters = layers * 12 * hidden * hidden + input_dim * hidden + 8 * hidden
    activations = nodes * layers * 16 * hidden * 4
    return parameters * 16 + activations
