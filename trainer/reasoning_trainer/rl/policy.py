"""The PGTS policy/value network: a small graph transformer over the search tree.

Nodes carry the generator's hidden state at their step's last token plus (PRM score, depth,
is-current, has-answer); edges (parent <-> child) carry the child's PRM score and depth. Each
layer mixes local message passing along tree edges with global attention over all nodes. The
current node's embedding, the tree's mean embedding and the current node's own (score, depth,
is-current, has-answer) give four action logits and a value.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..schema.models import PolicyNetworkSpec
from .tree import Tree, TreeState

NODE_EXTRAS = 4
EDGE_FEATURES = 2
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class GraphTransformerLayer(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, activation: str):
        super().__init__()
        self.local_norm, self.global_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.message = nn.Linear(width, width)
        self.edge = nn.Linear(EDGE_FEATURES, width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h, adjacency, edge_sums, node_mask):
        # Local: mean of messages from tree neighbours, each shaped by its edge's (score, depth).
        # The edge projection is linear, so the sum over neighbours of W e_ij + b is W (sum of e_ij)
        # + b x degree: no batch x nodes x nodes x width tensor is ever built.
        x = self.local_norm(h)
        degree = adjacency.sum(-1, keepdim=True)
        edge_messages = edge_sums @ self.edge.weight.T + degree * self.edge.bias
        messages = adjacency @ self.message(x) + edge_messages
        h = h + self.dropout(messages / degree.clamp(min=1))
        # Global: every node attends to every node of its tree.
        x = self.global_norm(h)
        attended, _ = self.attention(x, x, x, key_padding_mask=~node_mask, need_weights=False)
        h = h + self.dropout(attended)
        return h + self.dropout(self.mlp(self.mlp_norm(h)))


class TreePolicy(nn.Module):
    def __init__(self, feature_size: int, spec: PolicyNetworkSpec):
        super().__init__()
        self.feature_size = feature_size
        self.spec = spec
        width = spec.hidden_size
        self.embed = nn.Linear(feature_size + NODE_EXTRAS, width)
        self.layers = nn.ModuleList(GraphTransformerLayer(width, spec.heads, spec.dropout, spec.activation)
                                    for _ in range(spec.layers))
        self.norm = nn.LayerNorm(width)
        heads_input = 2 * width + NODE_EXTRAS
        self.policy_head = nn.Sequential(nn.Linear(heads_input, width), ACTIVATIONS[spec.activation](),
                                         nn.Linear(width, 4))
        self.value_head = nn.Sequential(nn.Linear(heads_input, width), ACTIVATIONS[spec.activation](),
                                        nn.Linear(width, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked action logits [B, 4], values [B]) for a batch from ``encode``."""
        h = self.embed(torch.cat([batch["features"], batch["extras"]], dim=-1))
        for layer in self.layers:
            h = layer(h, batch["adjacency"], batch["edge_sums"], batch["node_mask"])
        h = self.norm(h)
        rows = torch.arange(h.shape[0])
        current = h[rows, batch["current"]]
        weights = batch["node_mask"].unsqueeze(-1).float()
        pooled = (h * weights).sum(1) / weights.sum(1)
        # The current step's PRM score and whether it states an answer also go to the heads as they
        # are: mixed into the generator's hidden state by the layers alone, a policy trained for 24
        # iterations expanded with the same probability at any score (bench/RESULTS.md).
        z = torch.cat([current, pooled, batch["extras"][rows, batch["current"]]], dim=-1)
        logits = self.policy_head(z).masked_fill(~batch["action_mask"], float("-inf"))
        return logits, self.value_head(z).squeeze(-1)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / "policy.pt")
        (folder / "config.json").write_text(json.dumps(
            {"featureSize": self.feature_size, "spec": self.spec.model_dump(by_alias=True)}, indent=2))

    @classmethod
    def load(cls, folder: Path, device: torch.device) -> TreePolicy:
        config = json.loads((folder / "config.json").read_text())
        policy = cls(config["featureSize"], PolicyNetworkSpec.model_validate(config["spec"]))
        policy.restore(torch.load(folder / "policy.pt", map_location=device, weights_only=True), folder)
        return policy.to(device).eval()

    def restore(self, weights: dict, source: Path) -> None:
        """Load saved weights; weights of another network shape (a policy trained before the heads
        read the current step's score) say so instead of listing mismatched tensors."""
        try:
            self.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(
                f"{source}: this PGTS policy was saved for another network shape than this version's "
                f"({str(error).strip().splitlines()[-1].strip()}); a policy trained by an older reasoning-operator "
                f"cannot be loaded: remove {source} and run the rl stage again") from error


def encode(items: list[tuple[Tree, TreeState]], device: torch.device) -> dict[str, torch.Tensor]:
    """Padded tensors for a batch of decision points (each a tree as it was at that state)."""
    width = max(state.size for _, state in items)
    feature_size = items[0][0].nodes[0].feature.shape[-1]
    batch = len(items)
    features = torch.zeros(batch, width, feature_size)
    extras = torch.zeros(batch, width, NODE_EXTRAS)
    adjacency = torch.zeros(batch, width, width)
    edge_sums = torch.zeros(batch, width, EDGE_FEATURES)  # per node: the sum of its edges' features
    node_mask = torch.zeros(batch, width, dtype=torch.bool)
    for row, (tree, state) in enumerate(items):
        for index in range(state.size):
            node = tree.nodes[index]
            depth = node.depth / max(tree.max_depth, 1)
            features[row, index] = node.feature
            extras[row, index] = torch.tensor([node.score, depth, float(index == state.current),
                                               float(node.answer is not None)])
            node_mask[row, index] = True
            adjacency[row, index, index] = 1.0
            if node.parent is not None:
                adjacency[row, index, node.parent] = adjacency[row, node.parent, index] = 1.0
                edge = torch.tensor([node.score, depth])
                edge_sums[row, index] += edge
                edge_sums[row, node.parent] += edge
    return {"features": features.to(device), "extras": extras.to(device), "adjacency": adjacency.to(device),
            "edge_sums": edge_sums.to(device), "node_mask": node_mask.to(device),
            "current": torch.tensor([state.current for _, state in items], device=device),
            "action_mask": torch.tensor([state.mask for _, state in items], device=device)}
