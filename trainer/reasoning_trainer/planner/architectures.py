"""Shapes of the models a run names: read from a model's config when it is at hand,
else from a table of well-known models, else estimated from a parameter count."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..schema.base import parameter_count
from ..schema.models import LanguageModelSpec


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    head_dim: int = 0  # 0: hidden // heads
    qkv_bias: bool = True
    parameters_override: int | None = None
    source: str = "table"

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_size

    @property
    def embedding_parameters(self) -> int:
        """Embedding plus (untied) output head: the parts 8-bit loading keeps in 16-bit."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def quantised_parameters(self) -> int:
        """The linear layers' weights: what 8-bit loading stores as int8 (not embeddings, norms, biases)."""
        biases = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        kept = self.layers * (biases + 2 * self.hidden) + self.hidden
        return self.parameters - self.embedding_parameters - kept

    @property
    def layer_parameters(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0)
        return attention + 3 * h * i + 2 * h

    @property
    def parameters(self) -> int:
        if self.parameters_override:
            return self.parameters_override
        return self.embedding_parameters + self.layers * self.layer_parameters + self.hidden

    def lora_parameters(self, rank: int, targets: list[str]) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        per_layer = sum(rank * sum(shapes[name]) for name in targets if name in shapes)
        return per_layer * self.layers


def _qwen2(layers, hidden, heads, kv_heads, intermediate, tied) -> Architecture:
    return Architecture(layers, hidden, heads, kv_heads, intermediate, 151936, tied)


def _qwen3(layers, hidden, heads, kv_heads, intermediate, tied) -> Architecture:
    return Architecture(layers, hidden, heads, kv_heads, intermediate, 151936, tied, head_dim=128, qkv_bias=False)


def _llama3(layers, hidden, heads, kv_heads, intermediate, tied) -> Architecture:
    return Architecture(layers, hidden, heads, kv_heads, intermediate, 128256, tied, qkv_bias=False)


# (family, size) -> shape, from the models' published config.json files.
KNOWN: dict[tuple[str, str], Architecture] = {
    ("qwen2.5", "0.5b"): _qwen2(24, 896, 14, 2, 4864, True),
    ("qwen2.5", "1.5b"): _qwen2(28, 1536, 12, 2, 8960, True),
    ("qwen2.5", "3b"): _qwen2(36, 2048, 16, 2, 11008, True),
    ("qwen2.5", "7b"): _qwen2(28, 3584, 28, 4, 18944, False),
    ("qwen2.5", "14b"): _qwen2(48, 5120, 40, 8, 13824, False),
    ("qwen2.5", "32b"): _qwen2(64, 5120, 40, 8, 27648, False),
    ("qwen2.5", "72b"): _qwen2(80, 8192, 64, 8, 29568, False),
    ("qwen3", "0.6b"): _qwen3(28, 1024, 16, 8, 3072, True),
    ("qwen3", "1.7b"): _qwen3(28, 2048, 16, 8, 6144, True),
    ("qwen3", "4b"): _qwen3(36, 2560, 32, 8, 9728, True),
    ("qwen3", "8b"): _qwen3(36, 4096, 32, 8, 12288, False),
    ("qwen3", "14b"): _qwen3(40, 5120, 40, 8, 17408, False),
    ("qwen3", "32b"): _qwen3(64, 5120, 64, 8, 25600, False),
    ("llama-3.2", "1b"): _llama3(16, 2048, 32, 8, 8192, True),
    ("llama-3.2", "3b"): _llama3(28, 3072, 24, 8, 8192, True),
    ("llama-3.1", "8b"): _llama3(32, 4096, 32, 8, 14336, False),
    ("llama-3.1", "70b"): _llama3(80, 8192, 64, 8, 28672, False),
}
KNOWN[("qwen2", "0.5b")], KNOWN[("qwen2", "1.5b")], KNOWN[("qwen2", "7b")] = (
    KNOWN[("qwen2.5", "0.5b")], KNOWN[("qwen2.5", "1.5b")], KNOWN[("qwen2.5", "7b")])

# Models built into the trainer (no download): their configs live here so the planner
# and the trainer agree on them.
EMBEDDED: dict[str, Architecture] = {
    "tiny-qwen2": Architecture(layers=4, hidden=128, heads=4, kv_heads=2, intermediate=512, vocab=512,
                               tied_embeddings=True, source="embedded"),
    # A smaller shape, for comparing model sizes on the CPU (rto compare).
    "tiny-qwen2-small": Architecture(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=256, vocab=512,
                                     tied_embeddings=True, source="embedded"),
}

_FAMILIES = ("qwen2.5", "qwen3", "qwen2", "llama-3.2", "llama-3.1")
_SIZE = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)b(?![a-z0-9])")


class UnknownArchitecture(LookupError):
    pass


def architecture_for(model: LanguageModelSpec) -> Architecture:
    """The model's shape; ``parameters`` in the spec, when set, overrides the count."""
    found = _from_embedded(model.name) or _from_config_file(model.name) or _from_table(model.name)
    override = parameter_count(model.parameters) if model.parameters else None
    if found is None and override is None:
        raise UnknownArchitecture(
            f"cannot tell the size of '{model.name}' (no readable config.json and not a well-known model); "
            f"set parameters (for example parameters: 7B)"
        )
    if found is None:
        found = replace(_closest_by_size(override), source="estimated from parameters")
    return replace(found, parameters_override=override) if override else found


def _from_embedded(name: str) -> Architecture | None:
    return EMBEDDED.get(name.removeprefix("embedded:")) if name.startswith("embedded:") else None


def _from_config_file(name: str) -> Architecture | None:
    config_path = Path(name) / "config.json"
    if not name.startswith(("/", ".")) or not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    heads = config["num_attention_heads"]
    return Architecture(
        layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
        kv_heads=config.get("num_key_value_heads", heads), intermediate=config["intermediate_size"],
        vocab=config["vocab_size"], tied_embeddings=config.get("tie_word_embeddings", False),
        head_dim=config.get("head_dim") or 0, qkv_bias=config.get("model_type") == "qwen2",
        source=str(config_path),
    )


def _from_table(name: str) -> Architecture | None:
    lowered = name.lower()
    family = next((f for f in _FAMILIES if f in lowered.replace("llama-3-", "llama-3.1-")), None)
    size = _SIZE.search(lowered.rsplit("/", 1)[-1])
    return KNOWN.get((family, size.group(1) + "b")) if family and size else None


def _closest_by_size(parameters: int) -> Architecture:
    qwen = [arch for (family, _), arch in KNOWN.items() if family == "qwen2.5"]
    return min(qwen, key=lambda arch: abs(arch.parameters - parameters))
