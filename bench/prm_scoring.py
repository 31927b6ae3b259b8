"""PRM scoring: steps scored per second by our one-pass scoring (every step of a solution read
from one forward pass) against re-encoding every prefix (one pass per step, as the PGTS
reference does), on the same model and solutions, for 4, 8 and 16 steps per solution.

    python bench/prm_scoring.py            # the embedded tiny PRM shape on this machine
    python bench/prm_scoring.py --quick    # a smoke run for make test
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import Qwen2Config, Qwen2ForTokenClassification

from reasoning_trainer import prm
from reasoning_trainer.planner.architectures import EMBEDDED
from reasoning_trainer.tokenizer import build_embedded_tokenizer

SEPARATOR = "\n\n"


def solutions(count: int, steps: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        body = [f"{a} + {b} = {a + b}" if i % 2 == 0 else f"{a + b} - {a} = {b}" for i in range(steps - 1)]
        made.append((f"Tom has {a} apples and gets {b} more. How many now?", [*body, f"#### {a + b}"]))
    return made


def prefix_scores(model, tokenizer, items, batch_size: int) -> list[list[float]]:
    """The reference way: each step scored by encoding its whole prefix again."""
    prefixes = [(question, steps[:end]) for question, steps in items for end in range(1, len(steps) + 1)]
    last = [scores[-1] for scores in prm.score(model, tokenizer, prefixes, SEPARATOR, batch_size, 4096)]
    out, cursor = [], 0
    for _, steps in items:
        out.append(last[cursor:cursor + len(steps)])
        cursor += len(steps)
    return out


def timed(fn) -> tuple[float, object]:
    fn()  # warm-up
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    arch = EMBEDDED["tiny-qwen2"]
    torch.manual_seed(0)
    model = Qwen2ForTokenClassification(Qwen2Config(
        vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
        num_labels=2, max_position_embeddings=4096)).eval()
    tokenizer = build_embedded_tokenizer(arch.vocab, SEPARATOR)
    count, batch_size = (8, 8) if args.quick else (64, 16)
    print(f"device: cpu; torch {torch.__version__}; {count} solutions per row, batch {batch_size}")
    print("| steps | one pass: steps/s | every prefix: steps/s | speed-up | max score difference |")
    print("|---|---|---|---|---|")
    for steps in (4, 8, 16):
        items = solutions(count, steps)
        ours_seconds, ours = timed(lambda: prm.score(model, tokenizer, items, SEPARATOR, batch_size, 4096))
        theirs_seconds, theirs = timed(lambda: prefix_scores(model, tokenizer, items, batch_size))
        difference = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
        scored = count * steps
        print(f"| {steps} | {scored / ours_seconds:,.0f} | {scored / theirs_seconds:,.0f} | "
              f"{theirs_seconds / ours_seconds:.1f}x | {difference:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
