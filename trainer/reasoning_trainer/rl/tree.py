"""The search tree of one problem: reasoning steps as nodes, the four actions, their masks.

Pure bookkeeping: generating a step and scoring it happen in search.py, which hands the
result to ``add_step``. Node 0 is the question (the root); every other node is one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.answers import FORMATS

EXPAND, BRANCH, BACKTRACK, TERMINATE = range(4)
ACTIONS = ("expand", "branch", "backtrack", "terminate")


@dataclass
class Node:
    parent: int | None
    depth: int
    text: str  # the step ("" for the root)
    score: float  # the PRM's P(step is correct); 1.0 for the root
    feature: torch.Tensor  # the generator's last hidden state at the step's last token
    tokens: tuple[int, ...] = ()  # the step as generated, separator included
    answer: str | None = None  # the final answer this step states (the ``#### N`` line, a boxed answer)


@dataclass
class Tree:
    question: str
    max_depth: int
    max_nodes: int
    nodes: list[Node] = field(default_factory=list)
    current: int = 0
    done: bool = False
    answer_format: str = "gsm8k"

    @classmethod
    def start(cls, question: str, root_feature: torch.Tensor, max_depth: int, max_nodes: int,
              answer_format: str = "gsm8k") -> Tree:
        return cls(question, max_depth, max_nodes, [Node(None, 0, "", 1.0, root_feature)], answer_format=answer_format)

    def mask(self) -> list[bool]:
        """Which actions are allowed now: no branch or backtrack at the root, no expansion at the
        deepest level or past an answer, no new node once the tree is full; terminate only at a
        step that states the final answer, unless nothing else is left (a stop with no answer)."""
        node = self.nodes[self.current]
        room = len(self.nodes) < self.max_nodes
        at_root = node.parent is None
        moves = [room and node.depth < self.max_depth and node.answer is None, room and not at_root, not at_root]
        return moves + [node.answer is not None or not any(moves)]

    def path(self, index: int | None = None) -> list[int]:
        """Node indices from the first step down to ``index`` (default: the current node)."""
        index = self.current if index is None else index
        chain = []
        while index is not None and self.nodes[index].parent is not None:
            chain.append(index)
            index = self.nodes[index].parent
        return chain[::-1]

    def steps(self, index: int | None = None) -> list[str]:
        return [self.nodes[i].text for i in self.path(index)]

    def tokens(self, index: int) -> list[int]:
        """The path's steps exactly as the generator wrote them (re-tokenizing their text could
        split separators differently from what the generator saw in training)."""
        return [token for i in self.path(index) for token in self.nodes[i].tokens]

    def parent_for(self, action: int) -> int:
        """Where a new step hangs: under the current node (expand) or beside it (branch)."""
        return self.current if action == EXPAND else self.nodes[self.current].parent

    def add_step(self, parent: int, text: str, score: float, feature: torch.Tensor,
                 tokens: tuple[int, ...] = ()) -> int:
        answer = FORMATS[self.answer_format].stated(text)
        self.nodes.append(Node(parent, self.nodes[parent].depth + 1, text, score, feature, tokens, answer))
        self.current = len(self.nodes) - 1
        return self.current

    def backtrack(self) -> None:
        self.current = self.nodes[self.current].parent

    def is_leaf(self, index: int) -> bool:
        return all(node.parent != index for node in self.nodes)

    def leaves(self) -> list[int]:
        parents = {node.parent for node in self.nodes}
        return [i for i in range(1, len(self.nodes)) if i not in parents]

    def final_answer(self) -> str | None:
        """The answer of the step the policy terminated at: what the policy chose, not the best
        leaf anywhere in the tree. None when the search stopped without reaching an answer."""
        return self.nodes[self.current].answer

    def potential(self) -> float:
        """The PRM's score of the current step, the potential of the reward shaping (the root's is 0)."""
        node = self.nodes[self.current]
        return 0.0 if node.parent is None else node.score

    def state(self) -> TreeState:
        return TreeState(len(self.nodes), self.current, tuple(self.mask()))


@dataclass(frozen=True)
class TreeState:
    """A decision point: how many nodes existed, which was current, what was allowed. The tree's
    nodes only grow, so the first ``size`` nodes of the final tree are the tree as it was."""

    size: int
    current: int
    mask: tuple[bool, ...]
