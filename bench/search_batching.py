"""PGTS search: problems per second of the batched search (all problems' trees in one round of
policy, generation and PRM calls) against searching one problem at a time, with the same
models, seeds and limits; the trees must come out identical. Then the batched search with each
path's keys and values cached, the generator's and the PRM's (pgts.cacheKv), against both models
reading every path again for each new step.

    python bench/search_batching.py            # 8 and 32 problems, embedded tiny shapes
    python bench/search_batching.py --quick    # a smoke run for make test
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from reasoning_trainer.data import embedded
from reasoning_trainer.planner.architectures import EMBEDDED
from reasoning_trainer.rl.policy import TreePolicy
from reasoning_trainer.rl.search import SearchModels, search
from reasoning_trainer.schema.models import PolicyNetworkSpec
from reasoning_trainer.schema.stages import PgtsSpec
from reasoning_trainer.tokenizer import build_embedded_tokenizer

SEPARATOR = "\n\n"


def models() -> SearchModels:
    arch = EMBEDDED["tiny-qwen2"]
    config = dict(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                  num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
                  max_position_embeddings=4096)
    torch.manual_seed(0)
    generator = Qwen2ForCausalLM(Qwen2Config(**config)).eval()
    reward_model = Qwen2ForTokenClassification(Qwen2Config(**config, num_labels=2)).eval()
    tokenizer = build_embedded_tokenizer(arch.vocab, SEPARATOR)
    policy = TreePolicy(arch.hidden, PolicyNetworkSpec.model_validate({"hiddenSize": 64, "layers": 2, "heads": 4}))
    return SearchModels(generator, tokenizer, reward_model, tokenizer, policy, SEPARATOR, max_step_tokens=16,
                        max_prompt_tokens=96)


def shape(episodes) -> list:
    return [([(n.parent, n.text) for n in e.tree.nodes], [d.action for d in e.decisions]) for e in episodes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    searcher = models()
    limits = PgtsSpec.model_validate({"maxDepth": 4, "maxNodes": 8})
    sizes = (4,) if args.quick else (8, 32)
    print(f"device: cpu; torch {torch.__version__}; limits depth {limits.max_depth}, nodes {limits.max_nodes}")
    print("| problems | batched: problems/s | one at a time: problems/s | speed-up | identical trees |")
    print("|---|---|---|---|---|")
    for count in sizes:
        problems = embedded.problems(count, seed=5, split="train")
        seeds = list(range(count))
        started = time.perf_counter()
        batched = search(searcher, limits, problems, seeds)
        batched_seconds = time.perf_counter() - started
        started = time.perf_counter()
        alone = [search(searcher, limits, [problem], [seed])[0] for problem, seed in zip(problems, seeds)]
        alone_seconds = time.perf_counter() - started
        same = shape(batched) == shape(alone)
        print(f"| {count} | {count / batched_seconds:.2f} | {count / alone_seconds:.2f} | "
              f"{alone_seconds / batched_seconds:.1f}x | {'yes' if same else 'NO'} |")
    print()
    print("| problems | depth / nodes | cached paths: problems/s | re-encoded paths: problems/s | speed-up | "
          "identical trees |")
    print("|---|---|---|---|---|---|")
    for count, depth, nodes in ((4, 4, 8),) if args.quick else ((16, 8, 16), (16, 16, 32)):
        deep = PgtsSpec.model_validate({"maxDepth": depth, "maxNodes": nodes, "searchBatch": count})
        problems = embedded.problems(count, seed=7, split="train")
        seeds = list(range(count))
        timings, trees = {}, {}
        for cached in (True, False):
            limits = deep.model_copy(update={"cache_kv": cached})
            started = time.perf_counter()
            trees[cached] = shape(search(searcher, limits, problems, seeds))
            timings[cached] = time.perf_counter() - started
        print(f"| {count} | {depth} / {nodes} | {count / timings[True]:.2f} | {count / timings[False]:.2f} | "
              f"{timings[False] / timings[True]:.1f}x | {'yes' if trees[True] == trees[False] else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
