"""The models a run trains or uses: generator, process reward model, PGTS policy network."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import ParameterCount, SpecModel

Dtype = Literal["bfloat16", "float16", "float32"]

EMBEDDED_PREFIX = "embedded:"


class LoraSpec(SpecModel):
    """Low-rank adapters: train these instead of every weight of the model."""

    r: int = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear layers that get adapters.",
    )


class LanguageModelSpec(SpecModel):
    """A Hugging Face transformer, loaded the way `from_pretrained` loads it."""

    name: str = Field(
        min_length=1,
        description=(
            "Hub id (Qwen/Qwen2.5-3B-Instruct), a local or PVC path (/data/models/prm), "
            "or embedded:<name> for a model built into the trainer (embedded:tiny-qwen2)."
        ),
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    parameters: ParameterCount | None = Field(
        None,
        description="Parameter count (3B, 500M). Read from the model's config when omitted.",
    )
    dtype: Dtype = Field("bfloat16", description="Weight and compute dtype.")
    load_in_8bit: bool | None = Field(
        None,
        alias="loadIn8bit",
        description="Load weights in 8-bit (bitsandbytes). Omit to let the planner decide.",
    )
    lora: LoraSpec | None = Field(
        None,
        description="Train LoRA adapters instead of all weights when this model is trained.",
    )
    trust_remote_code: bool = Field(
        False, description="Run the model's own code from its repository (some published PRMs need it, e.g. "
                           "Qwen/Qwen2.5-Math-PRM-7B). Only for repositories you trust.")
    attn_implementation: Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"] = Field(
        "auto", description="Attention kernel. auto: flex_attention for packed SFT on a GPU (padding-free "
                            "batches without a dense mask), sdpa otherwise."
    )

    @property
    def embedded(self) -> bool:
        return self.name.startswith(EMBEDDED_PREFIX)


class GenerationSpec(SpecModel):
    """Sampling settings of the generator (one reasoning step or a whole solution)."""

    max_new_tokens: int = Field(128, ge=1, le=32768, description="Tokens generated per reasoning step.")
    max_prompt_tokens: int = Field(256, ge=1, le=131072, description="Longest prompt (problem) kept.")
    temperature: float = Field(0.7, gt=0.0, le=5.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    instruction: str = Field(
        "", description="Added after every question in the generator's prompts (SFT, RL, eval), e.g. the "
                        "answer format; the presets ask for steps separated by blank lines and a final '#### N'.")


class GeneratorSpec(LanguageModelSpec):
    """The reasoning model that writes solutions step by step."""

    generation: GenerationSpec = Field(default_factory=GenerationSpec)


class RewardModelSpec(LanguageModelSpec):
    """The process reward model (PRM): scores every reasoning step."""

    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout of the step-scoring head.")
    step_separator: str = Field("\n\n", min_length=1, description="Text that ends a reasoning step.")
    step_token: str | None = Field(
        None, min_length=1,
        description="Use a published PRM as it is (Qwen2.5-Math-PRM style): the steps are joined by this token "
                    "in the assistant turn (Qwen/Qwen2.5-Math-PRM-7B: <extra_0>) and each step's score is the "
                    "positive class's probability at its token. Nothing trains it: sft.target must not include "
                    "reward-model.")
    system_prompt: str = Field(
        "", description="System message before the question when a published PRM scores (stepToken); "
                        "Qwen2.5-Math-PRM was trained with 'Please reason step by step, and put your final answer "
                        "within \\boxed{}.'")


class PolicyNetworkSpec(SpecModel):
    """The small graph-transformer policy/value network that steers PGTS search."""

    hidden_size: int = Field(512, ge=8, le=8192, description="Width of the graph transformer.")
    layers: int = Field(4, ge=1, le=48, description="Graph-transformer layers.")
    heads: int = Field(8, ge=1, le=64, description="Attention heads per layer.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout (switched off during rollouts).")
    activation: Literal["gelu", "relu", "silu"] = Field("gelu", description="MLP activation.")

    @model_validator(mode="before")
    @classmethod
    def _no_quantization(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("loadIn8bit", "lora", "dtype"):
                if key in data:
                    raise ValueError(
                        f"{key} does not apply to the policy network: it is a small network trained "
                        f"in full precision; remove {key} (8-bit and LoRA apply to generator and rewardModel)"
                    )
        return data

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PolicyNetworkSpec:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hiddenSize {self.hidden_size} must be divisible by heads {self.heads}; "
                f"pick heads from the divisors of hiddenSize"
            )
        return self


class ModelsSpec(SpecModel):
    generator: GeneratorSpec | None = Field(None, description="The reasoning model.")
    reward_model: RewardModelSpec | None = Field(None, description="The process reward model.")
    policy: PolicyNetworkSpec = Field(
        default_factory=PolicyNetworkSpec, description="PGTS policy network (used when rl.algorithm is pgts)."
    )
