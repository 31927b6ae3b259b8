"""Planner accuracy: predicted against measured peak memory of real training and generation steps.

Builds Qwen2-architecture models with random weights from the planner's own architecture
table (no download), runs one warm-up and one measured step, and prints a markdown table of
predicted, measured and error. On a GPU it measures CUDA memory (allocated peak and device
use = reserved peak + CUDA context); on CPU (--quick) the tiny embedded model and process RSS.

    python bench/planner_memory.py                 # GPU: 0.5B, 1.5B, 3B; full, LoRA, PRM; 8-bit
    python bench/planner_memory.py --quick         # CPU smoke run on the tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch

from reasoning_trainer.planner import memory
from reasoning_trainer.planner.architectures import EMBEDDED, KNOWN, Architecture

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Case:
    size: str
    kind: str  # full-lm | lora-lm | lora-prm | generate | generate-8bit | pgts-fast
    batch: int
    seq: int
    checkpointing: bool = False


def qwen2_config(arch: Architecture):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
        tie_word_embeddings=arch.tied_embeddings, max_position_embeddings=4096, num_labels=2,
        attn_implementation="sdpa", use_cache=True,
    )


def build(case: Case, arch: Architecture, device: str):
    from transformers import Qwen2ForCausalLM, Qwen2ForTokenClassification

    config = qwen2_config(arch)
    cls = Qwen2ForTokenClassification if case.kind == "lora-prm" else Qwen2ForCausalLM
    # Full fine-tuning keeps fp32 master weights (autocast computes in bf16); LoRA and
    # generation hold the frozen base in bf16.
    dtype = torch.float32 if case.kind == "full-lm" or device == "cpu" else torch.bfloat16
    with torch.device(device):
        model = cls(config).to(dtype)
    if case.kind.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(LORA_TARGETS),
                          modules_to_save=["score"] if case.kind == "lora-prm" else None)
        model = get_peft_model(model, lora)
    return model


def predicted(case: Case, arch: Architecture, dtype: str) -> memory.Estimate:
    if case.kind == "pgts-fast":
        return fast_search_estimate()
    if case.kind.startswith("generate"):
        eight_bit = case.kind == "generate-8bit"
        estimate = memory.inference_weights(arch, dtype, eight_bit, "generator")
        tokens = case.seq + 128
        estimate.add("kv cache", memory.kv_cache_bytes(arch, case.batch, tokens))
        estimate.add("workspace", memory.forward_workspace_bytes(arch, case.batch * tokens))
        return estimate
    setup = memory.TrainingSetup(
        arch=arch, dtype=dtype, load_in_8bit=False,
        lora_rank=16 if case.kind.startswith("lora") else None, lora_targets=LORA_TARGETS,
        optimizer="adamw", micro_batch=case.batch, seq_len=case.seq,
        gradient_checkpointing=case.checkpointing, zero_stage=0, gpus=1, lm_head=case.kind != "lora-prm",
    )
    return memory.training_estimate(setup, "model")


def train_step(model, case: Case, vocab: int, device: str, optimizer) -> None:
    ids = torch.randint(0, vocab, (case.batch, case.seq), device=device)
    labels = torch.randint(0, 2, (case.batch, case.seq), device=device) if case.kind == "lora-prm" else ids
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def generate(model, case: Case, vocab: int, device: str) -> None:
    ids = torch.randint(0, vocab, (case.batch, case.seq), device=device)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=128,
                       min_new_tokens=128, do_sample=True, pad_token_id=0)


def load_8bit(arch: Architecture, device: str, scratch: str):
    """Random weights saved once, loaded back through bitsandbytes as a user's checkpoint would be."""
    from transformers import BitsAndBytesConfig, Qwen2ForCausalLM

    path = os.path.join(scratch, f"qwen2-{arch.hidden}")
    if not os.path.isdir(path):
        with torch.device("cpu"):
            Qwen2ForCausalLM(qwen2_config(arch)).to(torch.bfloat16).save_pretrained(path)
    return Qwen2ForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                            device_map={"": device}, dtype=torch.bfloat16)


def fast_search_estimate() -> memory.Estimate:
    """The planner's own estimate of the fast preset's rl stage on one GPU, less the policy network."""
    from reasoning_trainer.planner import plan_run
    from reasoning_trainer.schema import validate_spec

    device = plan_run(validate_spec({"preset": "fast"}), "80Gi").stages["rl"].devices[0]
    return memory.Estimate({name: gib for name, gib in device.parts.items() if name != "policy network"})


def search_step(device: str) -> float:
    """What one GPU holds in the fast preset's PGTS stage: the 3B generator extending 4 paths to full
    depth (256 prompt + 12 steps x 128 tokens) with its KV cache, and the 1.5B PRM scoring them.
    Returns the seconds of the measured phase."""
    from transformers import Qwen2ForCausalLM, Qwen2ForTokenClassification

    generator_arch, scorer_arch = KNOWN[("qwen2.5", "3b")], KNOWN[("qwen2.5", "1.5b")]
    with torch.device(device):
        generator = Qwen2ForCausalLM(qwen2_config(generator_arch)).to(torch.bfloat16).eval()
        scorer = Qwen2ForTokenClassification(qwen2_config(scorer_arch)).to(torch.bfloat16).eval()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    prompt = torch.randint(0, generator_arch.vocab, (4, 256), device=device)
    with torch.no_grad():
        paths = generator.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=12 * 128, min_new_tokens=12 * 128, do_sample=True, pad_token_id=0)
        scorer(input_ids=paths)
    return time.perf_counter() - started


def model_step(case: Case, arch: Architecture, device: str, scratch: str) -> float:
    """One warm-up and one measured training or generation step of one model; seconds of both."""
    cuda = device.startswith("cuda")
    if case.kind == "generate-8bit":
        model = load_8bit(arch, device, scratch)
    else:
        model = build(case, arch, device)
    if cuda:
        # Random init happens in fp32 before the cast; a checkpoint load would never hold that.
        torch.cuda.empty_cache()
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    started = time.perf_counter()
    if case.kind.startswith("generate"):
        model.eval()
        generate(model, case, arch.vocab, device)  # warm-up: kernels and allocator pools
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        generate(model, case, arch.vocab, device)
    else:
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        train_step(model, case, arch.vocab, device, optimizer)  # warm-up allocates optimizer state
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train_step(model, case, arch.vocab, device, optimizer)
    return time.perf_counter() - started


def measure(case: Case, arch: Architecture, device: str, scratch: str) -> dict:
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        free_before, total = torch.cuda.mem_get_info()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    seconds = search_step(device) if case.kind == "pgts-fast" else model_step(case, arch, device, scratch)
    if cuda:
        torch.cuda.synchronize()
        allocated = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
        context = (total - free_before) / 2**30 + _context_gib()
        used = reserved + _context_gib()
    else:
        allocated = reserved = used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - rss_before
        context = 0.0
    return {"allocated_gib": allocated, "reserved_gib": reserved, "device_used_gib": used,
            "seconds": seconds, "baseline_gib": context}


_CONTEXT = None


def _context_gib() -> float:
    """Device memory the CUDA context, cuBLAS workspaces and kernels take outside PyTorch's pool."""
    global _CONTEXT
    if _CONTEXT is None:
        free, total = torch.cuda.mem_get_info()
        _CONTEXT = (total - free) / 2**30 - torch.cuda.memory_reserved() / 2**30
    return _CONTEXT


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("tiny", "full-lm", 8, 128), Case("tiny", "lora-prm", 8, 128, True)]
    chosen = []
    for size in ("0.5b", "1.5b", "3b"):
        for kind in ("full-lm", "lora-lm", "lora-prm"):
            for checkpointing in (False, True):
                if size == "3b" and kind == "full-lm" and not checkpointing:
                    continue  # 49 GiB of state plus 25 GiB of activations: past an 80 GiB card
                chosen.append(Case(size, kind, 8, 512, checkpointing))
        chosen.append(Case(size, "generate", 8, 256))
        if size != "3b":  # saving 3B random weights for the 8-bit reload costs more than it tells
            chosen.append(Case(size, "generate-8bit", 8, 256))
    chosen.append(Case("1.5b", "lora-prm", 16, 512, False))  # the fast preset's reward-model stage
    chosen.append(Case("1.5b", "lora-prm", 16, 512, True))
    chosen.append(Case("3b", "pgts-fast", 4, 1792))  # the fast preset's rl stage on one GPU
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on the tiny model")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--scratch", default="/tmp/rto-bench-models")
    parser.add_argument("--only", help="run only cases of this step kind (e.g. pgts-fast)")
    args = parser.parse_args(argv)
    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda:0"
    torch.manual_seed(0)
    rows = []
    print(f"device: {torch.cuda.get_device_name(0) if device != 'cpu' else 'cpu'}; torch {torch.__version__}")
    if device == "cpu" and not args.quick:
        print("no GPU here: measuring the tiny model on the CPU (the --quick cases)")
    print("| model | step | batch x seq | ckpt | predicted live GiB | measured peak allocated | "
          "predicted device GiB | measured device GiB | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases(device == "cpu"):
        if args.only and case.kind != args.only:
            continue
        arch = EMBEDDED["tiny-qwen2"] if case.size == "tiny" else KNOWN[("qwen2.5", case.size)]
        estimate = predicted(case, arch, "float32" if device == "cpu" else "bfloat16")
        try:
            measured = measure(case, arch, device, args.scratch)
        except torch.cuda.OutOfMemoryError:
            print(f"| {case.size} | {case.kind} | {case.batch}x{case.seq} | {case.checkpointing} | OOM |||||")
            torch.cuda.empty_cache()
            continue
        live = sum(estimate.parts.values())
        used = measured["device_used_gib"]
        # On CPU the reading is growth of the process's high-water mark (0 when an earlier case set
        # it), compared with the live estimate: the GPU runtime's fixed share does not apply there.
        expected = live if device == "cpu" else estimate.total
        error = (expected - used) / used * 100 if used > 0 else None
        rows.append({**case.__dict__, "predicted_live_gib": live, "predicted_device_gib": estimate.total,
                     "parts": estimate.parts, **measured, "error_pct": error})
        print(f"| Qwen2.5-{case.size} | {case.kind} | {case.batch}x{case.seq} | {case.checkpointing} | "
              f"{live:.2f} | {measured['allocated_gib']:.2f} | {estimate.total:.2f} | "
              f"{used:.2f} | {'n/a' if error is None else f'{error:+.0f}%'} |", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
