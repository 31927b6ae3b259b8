"""What SFT and PRM training share: TrainingArguments and the DeepSpeed config from the plan,
resuming from the latest complete checkpoint, SIGTERM handling and metrics.

The loop itself is transformers' Trainer (with DeepSpeed when the plan asks for ZeRO);
this module only translates our stage spec and plan into its arguments.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from . import console, flops
from .checkpoints import StopRequest, latest_complete, mark_complete
from .metrics import StageMetrics
from .schema.stages import TrainingStageSpec


class StageInterrupted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the stage resumes from it when run again."""


@dataclass
class TrainOutcome:
    steps: int
    resumed_from_step: int | None
    final_loss: float | None
    seconds: float
    tokens: int


def deepspeed_config(zero_stage: int, stage: TrainingStageSpec) -> dict:
    """ZeRO settings; "auto" values are filled in by transformers from TrainingArguments."""
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            **({"stage3_gather_16bit_weights_on_model_save": True} if zero_stage == 3 else {}),
        },
    }


def training_arguments(stage: TrainingStageSpec, plan: dict, output_dir: Path, dtype: str,
                       on_gpu: bool) -> TrainingArguments:
    zero = plan.get("zero_stage")
    use_deepspeed = zero is not None and (zero > 0 or plan["gpus"] > 1)
    if use_deepspeed:
        _single_process_rendezvous()
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=plan.get("batch_size") or stage.batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        num_train_epochs=stage.epochs,
        learning_rate=stage.learning_rate,
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        optim="adamw_bnb_8bit" if stage.optimizer == "adamw-8bit" else "adamw_torch",
        activation_checkpointing=bool(plan.get("gradient_checkpointing")),
        bf16=on_gpu and dtype == "bfloat16",
        fp16=on_gpu and dtype == "float16",
        use_cpu=not on_gpu,
        deepspeed=deepspeed_config(zero, stage) if use_deepspeed else None,
        save_strategy="steps",
        save_steps=stage.checkpoint_every,
        save_total_limit=2,
        logging_steps=max(1, min(10, stage.checkpoint_every)),
        logging_first_step=True,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=not console.verbose(),  # the stage's own progress bar says how far it is
        include_num_input_tokens_seen=True,
    )


def _single_process_rendezvous() -> None:
    """DeepSpeed initialises torch.distributed; outside torchrun there is one process."""
    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")


def train(trainer: Trainer, role: str, metrics: StageMetrics, stop: StopRequest,
          progress_span: tuple[float, float] = (0.0, 1.0)) -> TrainOutcome:
    """Run the Trainer, resuming from the newest complete checkpoint in its output folder."""
    resume = latest_complete(Path(trainer.args.output_dir))
    watcher = _Watcher(role, metrics, stop, progress_span)
    trainer.add_callback(watcher)
    if not console.verbose():
        trainer.remove_callback(PrinterCallback)  # raw log dicts; the watcher records the same values
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.requested:
        raise StageInterrupted(f"{role} training stopped at step {trainer.state.global_step} after SIGTERM")
    return TrainOutcome(
        steps=trainer.state.global_step,
        resumed_from_step=int(resume.name.split("-")[1]) if resume else None,
        final_loss=watcher.last_loss,
        seconds=time.monotonic() - started,
        tokens=watcher.tokens,
    )


class _Watcher(TrainerCallback):
    """Marks checkpoints complete, stops cleanly on SIGTERM, and exports step metrics."""

    def __init__(self, role: str, metrics: StageMetrics, stop: StopRequest, span: tuple[float, float]):
        self.role, self.metrics, self.stop, self.span = role, metrics, stop, span
        self.last_loss: float | None = None
        self.tokens = 0
        self._step_started = time.monotonic()
        self._tokens_seen = 0
        self.device_name, self.parameters, self.world_size = "", 0, 1
        self.shape: flops.Shape | None = None
        self.recompute, self.sequences_per_step = False, 1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        self.parameters = sum(p.numel() for p in model.parameters()) if model is not None else 0
        self.world_size = max(args.world_size, 1)
        self.shape = flops.Shape.of(model) if model is not None else None
        self.recompute = bool(getattr(args, "activation_checkpointing", False))
        self.sequences_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * self.world_size

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested:
            control.should_save = True
            control.should_training_stop = True
        seconds = time.monotonic() - self._step_started
        tokens = max(int(state.num_input_tokens_seen) - self._tokens_seen, 0)
        self._tokens_seen = int(state.num_input_tokens_seen)
        self.tokens += tokens
        self.metrics.step(self.role, seconds, tokens, state.global_step)
        if self.shape is not None and tokens:
            # A causal token attends to half its sequence on average.
            context = tokens / self.sequences_per_step / 2
            self.metrics.flops(self.role, flops.training(self.shape, tokens, context, self.recompute))
        if self.device_name:
            # num_input_tokens_seen counts every process's tokens: MFU is per device.
            mfu = model_flops_utilization(self.parameters, tokens, seconds, self.device_name)
            if mfu is not None:
                self.metrics.mfu(self.role, mfu / self.world_size)
        done = state.global_step / max(state.max_steps, 1)
        self.metrics.progress(self.span[0] + (self.span[1] - self.span[0]) * done)

    def on_save(self, args, state, control, **kwargs):
        mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            self.metrics.loss(self.role, state.global_step, self.last_loss, logs.get("learning_rate"))


# Dense 16-bit tensor-core peaks (FLOP/s) by device-name fragment, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
              "A10": 125e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device_name: str) -> float | None:
    return next((flops for fragment, flops in PEAK_FLOPS.items() if fragment in device_name), None)


def model_flops_utilization(parameters: int, tokens: int, seconds: float, device_name: str) -> float | None:
    """6·N FLOPs per trained token (forward and backward) over the device's peak."""
    peak = peak_flops(device_name)
    if not peak or seconds <= 0:
        return None
    return 6 * parameters * tokens / seconds / peak


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch (or the only process): the one that writes shared files."""
    return os.environ.get("RANK", "0") == "0"


def on_gpu() -> bool:
    return torch.cuda.is_available()
