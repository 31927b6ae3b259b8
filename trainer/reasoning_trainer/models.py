"""Load the generator and the process reward model the way the plan says: dtype, 8-bit,
LoRA and an explicit device for each model (never a blind device_map="auto").

A model is read from, in order: what an earlier stage of this run trained
(``<outputDir>/models/<role>``), then the spec's name (hub id or local/PVC path), or for
``embedded:`` names the tiny model built into the trainer (pretrain.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, BitsAndBytesConfig,
    PreTrainedTokenizerBase,
)

from . import tokenizer as embedded_tokenizer
from .checkpoints import is_complete
from .job import StageJob
from .planner.architectures import EMBEDDED
from .schema.models import EMBEDDED_PREFIX, LanguageModelSpec

ROLE_DIRS = {"generator": "generator", "rewardModel": "reward-model"}
STEP_LABELS = 2  # the PRM head: 0 = wrong step, 1 = correct step
ADAPTER_CONFIG = "adapter_config.json"


def model_spec(job: StageJob, role: str) -> LanguageModelSpec:
    return job.spec.models.generator if role == "generator" else job.spec.models.reward_model


def source(job: StageJob, role: str, fresh: bool = False) -> str:
    """Where this stage reads the model from: the run's trained copy if there is one (unless ``fresh``:
    the spec's model, what the run started from)."""
    trained = job.paths.model(ROLE_DIRS[role])
    return str(trained) if is_complete(trained) and not fresh else model_spec(job, role).name


def device_for(job: StageJob, stage: str, role: str) -> torch.device:
    """The plan's placement of a role ("cuda:1", "cpu", "cuda:0-3 (data parallel)")."""
    where = job.stage_plan(stage)["placement"].get(role, "cpu")
    if where == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if "data parallel" in where:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(where)


def load_tokenizer(job: StageJob, role: str = "generator") -> PreTrainedTokenizerBase:
    spec = model_spec(job, role)
    if spec.embedded:
        arch = EMBEDDED[spec.name.removeprefix(EMBEDDED_PREFIX)]
        return embedded_tokenizer.load_or_build(job.paths.tokenizer, arch.vocab, job.spec.step_separator)
    tokenizer = AutoTokenizer.from_pretrained(source(job, role), revision=_revision(job, role),
                                              token=_hub_token())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_generator(job: StageJob, stage: str, trainable: bool = False, fresh: bool = False):
    """The generator as a causal LM on its planned device (with LoRA adapters when trainable); ``fresh``:
    the model the run started from, not its trained copy."""
    return _load(job, stage, "generator", AutoModelForCausalLM, trainable, {}, fresh)


def load_reward_model(job: StageJob, stage: str, trainable: bool = False, fresh: bool = False):
    """The PRM: the base model with a two-way step classification head (token classification), or a
    published PRM as it is (stepToken), wrapped so that prm.score encodes steps the way it was trained;
    ``fresh``: the spec's model, not the run's trained copy."""
    spec = job.spec.models.reward_model
    if spec.step_token:
        return PublishedPrm(_load(job, stage, "rewardModel", _published_class(job), False, {}, fresh),
                            load_tokenizer(job, "rewardModel"), spec.step_token, spec.system_prompt)
    extra = {"num_labels": STEP_LABELS, "classifier_dropout": spec.dropout}
    return _load(job, stage, "rewardModel", AutoModelForTokenClassification, trainable, extra, fresh)


class PublishedPrm(torch.nn.Module):
    """A published PRM (Qwen2.5-Math-PRM style): per-token logits of two classes, read at the step token
    that ends each step of the assistant turn. ``logits`` of its output are the model's, whatever class
    its own code returns."""

    def __init__(self, model, tokenizer, step_token: str, system_prompt: str):
        super().__init__()
        self.model, self.system_prompt = model, system_prompt
        ids = tokenizer(step_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"spec.models.rewardModel.stepToken: {step_token!r} is {len(ids)} tokens in this "
                             f"model's tokenizer, not one; name the token the PRM was trained with")
        self.step_token, self.step_token_id = step_token, ids[0]

    def forward(self, **inputs):
        out = self.model(**inputs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return SimpleNamespace(logits=logits)


def _published_class(job: StageJob):
    """Its own token-classification class when the checkpoint is one, else the class its code defines."""
    spec = job.spec.models.reward_model
    config = AutoConfig.from_pretrained(source(job, "rewardModel"), revision=spec.revision, token=_hub_token(),
                                        trust_remote_code=spec.trust_remote_code)
    if any(name.endswith("ForTokenClassification") for name in (config.architectures or [])):
        return AutoModelForTokenClassification
    from transformers import AutoModel

    return AutoModel


def _load(job, stage, role, auto_class, trainable, extra, fresh=False):
    spec = model_spec(job, role)
    plan = job.stage_plan(stage)
    device = device_for(job, stage, role)
    # Fully trained weights stay fp32 masters (the Trainer autocasts to spec.dtype), which is what
    # the planner's 16 bytes per trained parameter assume; frozen and LoRA bases load in spec.dtype.
    dtype = torch.float32 if trainable and spec.lora is None else getattr(torch, spec.dtype)
    eight_bit = bool(plan["load_in_8bit"].get(role, False))
    where = source(job, role, fresh)
    if where.startswith(EMBEDDED_PREFIX):
        where = str(_embedded_base(job, where))
    attention = attention_kernel(job, stage, role, trainable, device)
    model = _pretrained(job, role, where, auto_class, dtype, eight_bit, device, attention, extra, fresh)
    if not eight_bit:
        model.to(device)
    if trainable and spec.lora is not None and not _has_adapters(model):
        model = _with_lora(model, spec, task_type="CAUSAL_LM" if role == "generator" else "TOKEN_CLS")
    if not trainable:
        model.eval()
    return model


def _embedded_base(job: StageJob, name: str) -> Path:
    """The embedded model of that shape, pretrained once per run (pretrain.py) in models/base/<shape>."""
    from . import pretrain

    shape = name.removeprefix(EMBEDDED_PREFIX)
    target = job.paths.model("base") / shape
    if not is_complete(target):
        pretrain.build_base(EMBEDDED[shape], load_tokenizer(job), job.spec.step_separator, target)
    return target


def attention_kernel(job: StageJob, stage: str, role: str, trainable: bool, device: torch.device) -> str:
    """The spec's kernel, or for auto: flex_attention where SFT trains the generator on packed batches
    on a GPU. SDPA needs a dense block-diagonal mask for packed rows, which made packing no faster
    than padding; flex attention skips the masked blocks (1.6-1.8x, bench/RESULTS.md)."""
    chosen = model_spec(job, role).attn_implementation
    if chosen != "auto":
        return chosen
    packed_sft = stage == "sft" and role == "generator" and trainable and job.spec.stages.sft.packing
    return "flex_attention" if packed_sft and device.type == "cuda" else "sdpa"


def _pretrained(job, role, where, auto_class, dtype, eight_bit, device, attention, extra, fresh=False):
    revision = model_spec(job, role).revision if fresh else _revision(job, role)
    options = dict(dtype=dtype, revision=revision, token=_hub_token(), attn_implementation=attention,
                   trust_remote_code=model_spec(job, role).trust_remote_code)
    if extra:  # head settings (labels, dropout) that only the config takes
        options["config"] = AutoConfig.from_pretrained(where, revision=options["revision"], token=options["token"],
                                                       **extra)
    if eight_bit:
        options["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        options["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    if (Path(where) / ADAPTER_CONFIG).is_file():
        return _with_saved_adapters(where, auto_class, options)
    return auto_class.from_pretrained(where, **options)


def _with_saved_adapters(folder: str, auto_class, options):
    """Adapters trained on an 8-bit base are kept separate (merging into int8 weights loses them)."""
    from peft import PeftConfig, PeftModel

    base = auto_class.from_pretrained(PeftConfig.from_pretrained(folder).base_model_name_or_path, **options)
    return PeftModel.from_pretrained(base, folder)


def _with_lora(model, spec: LanguageModelSpec, task_type: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.target_modules), task_type=task_type,
        # The step head is new: it trains in full alongside the adapters.
        modules_to_save=["score"] if task_type == "TOKEN_CLS" else None,
    )
    return get_peft_model(model, config)


def _has_adapters(model) -> bool:
    return hasattr(model, "peft_config")


def save_trained(model, tokenizer, target: Path) -> None:
    """Final weights for later stages: LoRA merged into 16-bit weights; kept as adapters on 8-bit.
    Under torchrun only rank 0 writes them."""
    from .checkpoints import atomic_dir
    from .training import is_main_process

    if not is_main_process():
        return
    with atomic_dir(target) as staging:
        if _has_adapters(model) and not getattr(model, "is_loaded_in_8bit", False):
            model = model.merge_and_unload()
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)



def _revision(job: StageJob, role: str) -> str | None:
    # A revision names a hub commit; the run's own trained copy has none.
    return None if source(job, role) != model_spec(job, role).name else model_spec(job, role).revision


def _hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None
