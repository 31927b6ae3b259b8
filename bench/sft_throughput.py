"""SFT throughput: our packed, padding-free batches against a plain transformers.Trainer that pads
each batch to its longest example, on the same model, data and TrainingArguments; plus MFU on a
GPU and the generation speed of RL rollouts.

Every case runs in a fresh process, so peak memory (CUDA peak allocated, or process RSS on CPU)
belongs to that case alone. Examples have GSM8K-like lengths (prompts of 60 to 150 tokens,
solutions of 40 to 450), so padding to the longest wastes what a real dataset would.

    python bench/sft_throughput.py            # GPU: Qwen2.5 0.5B, 1.5B, 3B shapes, random weights
    python bench/sft_throughput.py --quick    # CPU smoke run on the embedded tiny model
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time

import torch
from transformers import TrainerCallback

from reasoning_trainer.planner.architectures import EMBEDDED, KNOWN

WARMUP_STEPS = 3


def examples(count: int, vocab: int, seed: int = 0, scale: float = 1.0) -> list[dict]:
    """Token sequences with the length spread of GSM8K prompts + solutions; loss on the solution."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = int(rng.randint(60, 150) * scale)
        solution = int(rng.lognormvariate(5.0, 0.5) * scale)
        solution = max(8, min(solution, int(450 * scale)))
        ids = [rng.randrange(10, min(vocab, 50_000)) for _ in range(prompt + solution)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


class CountingCollator:
    """Wraps a collator and records, per batch, real tokens and tokens the model processes."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features):
        batch = self.inner(features)
        real = sum(len(feature["input_ids"]) for feature in features)
        self.batches.append((real, batch["input_ids"].numel()))
        return batch


def run_case(size: str, mode: str, batch: int, steps: int, checkpointing: bool) -> dict:
    from transformers import (DataCollatorForSeq2Seq, DataCollatorWithFlattening, Qwen2Config, Qwen2ForCausalLM,
                              Trainer)

    from reasoning_trainer import training
    from reasoning_trainer.schema.stages import SftSpec
    from reasoning_trainer.tokenizer import build_embedded_tokenizer

    gpu = torch.cuda.is_available() and size != "tiny"
    arch = EMBEDDED["tiny-qwen2"] if size == "tiny" else KNOWN[("qwen2.5", size)]
    config = Qwen2Config(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                         num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                         num_key_value_heads=arch.kv_heads, tie_word_embeddings=arch.tied_embeddings,
                         max_position_embeddings=4096,
                         attn_implementation="flex_attention" if mode == "packed-flex" else "sdpa")
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):
        model = Qwen2ForCausalLM(config)  # fp32 master weights, bf16 autocast: what our full SFT runs
    if mode == "generate":
        return {"size": size, **_generate(model, batch, gpu)}
    tokenizer = build_embedded_tokenizer(512, "\n\n")
    tokenizer.padding_side = "right"
    collator = CountingCollator(DataCollatorWithFlattening() if mode.startswith("packed")
                                else DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
    data = examples(batch * steps, arch.vocab, scale=1.0 if gpu else 0.25)
    stage = SftSpec.model_validate({"epochs": 1, "batchSize": batch, "learningRate": 1e-5,
                                         "checkpointEvery": 10**6})
    plan = {"zero_stage": 0, "gpus": 1 if gpu else 0, "batch_size": batch, "gradient_checkpointing": checkpointing}
    with tempfile.TemporaryDirectory() as scratch:
        arguments = training.training_arguments(stage, plan, scratch, "bfloat16", gpu)
        arguments.disable_tqdm = True
        clock = _StepClock()
        trainer = Trainer(model=model, args=arguments, train_dataset=data, data_collator=collator,
                          callbacks=[clock])
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    measured = collator.batches[WARMUP_STEPS:len(clock.ends)]
    seconds = clock.ends[-1] - clock.ends[WARMUP_STEPS - 1]
    real = sum(r for r, _ in measured)
    processed = sum(p for _, p in measured)
    parameters = model.num_parameters()
    device_name = torch.cuda.get_device_name(0) if gpu else "cpu"
    return {
        "size": size, "mode": mode, "batch": batch, "steps": len(measured), "checkpointing": checkpointing,
        "tokens_per_second": real / seconds, "processed_per_second": processed / seconds,
        "padding_share": 1 - real / processed, "seconds_per_step": seconds / len(measured),
        "peak_gib": (torch.cuda.max_memory_allocated() if gpu
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "mfu": training.model_flops_utilization(parameters, real, seconds, device_name),
        "parameters": parameters, "device": device_name,
    }


class _StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step (CUDA synchronised)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def _generate(model, batch: int, gpu: bool) -> dict:
    """Sampled rollouts as GRPO draws them: bf16 weights, a batch of prompts, 128 new tokens each."""
    model = model.to(torch.bfloat16 if gpu else torch.float32).eval()
    new_tokens, prompt = (128, 128) if gpu else (16, 32)
    ids = torch.randint(10, 500, (batch, prompt), device=model.device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=0.8,
                  pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **kwargs)  # warm-up
        if gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(ids, **kwargs)
        if gpu:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    generated = (out.shape[1] - prompt) * batch
    return {"mode": "generate", "batch": batch,
            "tokens_per_second": generated / seconds, "seconds": seconds,
            "device": torch.cuda.get_device_name(0) if gpu else "cpu"}


def cases(quick: bool) -> list[tuple]:
    if quick:  # flex attention needs a GPU
        return [("tiny", "packed", 8, 8, False), ("tiny", "padded", 8, 8, False), ("tiny", "generate", 8, 0, False)]
    chosen = []
    for size, checkpointing in (("0.5b", False), ("1.5b", False), ("3b", True)):
        for mode in ("packed", "packed-flex", "padded"):
            chosen.append((size, mode, 8, 20, checkpointing))
        chosen.append((size, "generate", 32, 0, False))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on the tiny model")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # size,mode,batch,steps,checkpointing (child process)
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--size", action="append", help="only these model sizes (0.5b, 1.5b, 3b)")
    args = parser.parse_args(argv)
    if args.case:
        size, mode, batch, steps, checkpointing = args.case.split(",")
        row = run_case(size, mode, int(batch), int(steps), checkpointing == "True")
        print("RESULT " + json.dumps(row))
        return 0
    quick = args.quick or not torch.cuda.is_available()
    if quick and not args.quick:
        print("no GPU here: measuring the tiny model on the CPU (the --quick cases)")
    rows = [_child(case) for case in cases(quick) if not args.size or case[0] in args.size]
    print(render(rows))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


def _child(case: tuple) -> dict:
    command = [sys.executable, __file__, "--case", ",".join(str(part) for part in case)]
    output = subprocess.run(command, capture_output=True, text=True)
    for line in output.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"case {case} failed:\n{output.stderr[-3000:]}")


def render(rows: list[dict]) -> str:
    lines = ["| model | batches | batch | ckpt | tokens/s (real) | tokens/s processed | padding | peak GiB | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["mode"] == "generate":
            continue
        mfu = f"{row['mfu'] * 100:.1f}%" if row.get("mfu") else "-"
        lines.append(f"| {row['size']} | {row['mode']} | {row['batch']} | {row['checkpointing']} | "
                     f"{row['tokens_per_second']:,.0f} | {row['processed_per_second']:,.0f} | "
                     f"{row['padding_share'] * 100:.0f}% | {row['peak_gib']:.2f} | {mfu} |")
    lines.append("")
    for size in dict.fromkeys(row["size"] for row in rows):
        by_mode = {row["mode"]: row for row in rows if row["size"] == size}
        for packed in ("packed", "packed-flex"):
            if packed in by_mode and "padded" in by_mode:
                speed = by_mode[packed]["tokens_per_second"] / by_mode["padded"]["tokens_per_second"]
                memory = by_mode[packed]["peak_gib"] / by_mode["padded"]["peak_gib"]
                lines.append(f"{size}: {packed} / padded tokens per second = {speed:.2f}x, "
                             f"peak memory = {memory:.2f}x")
        if "generate" in by_mode:
            row = by_mode["generate"]
            lines.append(f"{size}: rollout generation {row['tokens_per_second']:,.0f} tokens/s "
                         f"(batch {row['batch']}, sampled)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
