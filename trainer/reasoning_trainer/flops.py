"""FLOPs a stage spends, counted from the tokens it processes and the models' shapes.

Per token, a forward pass costs 2 FLOPs per weight (one multiply, one add) plus attention over
its context (QKᵀ and the weighted sum of V: 4 · layers · hidden size · context). Training adds
the backward pass: 2 per weight for the activations' gradients, 2 per *trainable* weight for the
weights' gradients (so full fine-tuning is the familiar 6N, LoRA about 4N), and attention twice
over; recomputing activations (gradient checkpointing) adds one more forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    parameters: int  # every weight the forward pass multiplies by
    trainable: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, model: Any) -> Shape:
        """A torch model's shape; its config (a transformers model) gives the attention term."""
        parameters = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        config = getattr(model, "config", None)
        return cls(parameters, trainable, int(getattr(config, "num_hidden_layers", 0) or 0),
                   int(getattr(config, "hidden_size", 0) or 0))


def forward(shape: Shape, tokens: float, context: float) -> float:
    """A forward pass over ``tokens`` tokens that attend to ``context`` tokens each on average."""
    return tokens * (2 * shape.parameters + 4 * shape.layers * shape.hidden * context)


def training(shape: Shape, tokens: float, context: float, recompute: bool = False) -> float:
    """Forward and backward over ``tokens`` tokens, with the weights' gradients of the trainable ones."""
    weights = 2 * shape.parameters * (2 + recompute) + 2 * shape.trainable
    attention = 4 * shape.layers * shape.hidden * context * (3 + recompute)
    return tokens * (weights + attention)


def generation(shape: Shape, sequences: int, prompt: float, generated: float) -> float:
    """Decoding ``generated`` tokens after a ``prompt`` (per-sequence means) with a KV cache: the
    prompt once, then each new token attending to everything before it."""
    return sequences * (forward(shape, prompt, prompt / 2) + forward(shape, generated, prompt + generated / 2))
