"""The planner: for every stage, the fewest GPUs, the precision, ZeRO stage and gradient
checkpointing under which the stage's estimated peak memory fits, and where each model goes.

Preferences, in order (docs/planner.md explains why):
1. 16-bit weights over 8-bit: 8-bit only when 16-bit fits on no GPU count the stage may use;
2. fewer GPUs over more; 3. no gradient checkpointing over checkpointing; ZeRO-2 over ZeRO-3.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product

from ..schema.base import quantity_gib
from ..schema.cluster import GPU_TYPES
from ..schema.errors import Issue
from ..schema.models import LanguageModelSpec
from ..schema.run import RunSpec
from ..schema.stages import StageSpec, TrainingStageSpec
from .architectures import Architecture, UnknownArchitecture, architecture_for
from .memory import (
    CPU_RUNTIME_OVERHEAD_GIB, Estimate, TrainingSetup, attention_scores_bytes, forward_workspace_bytes,
    inference_weights, kv_cache_bytes, policy_network_bytes, training_estimate,
)

# Share of a GPU's memory a plan may fill; the rest absorbs allocator spikes and
# fragmentation the model does not see.
MEMORY_BUDGET = 0.92
_SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
ROLES = {"generator": "generator", "rewardModel": "reward_model"}


class PlanError(ValueError):
    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


@dataclass
class StagePlan:
    stage: str
    gpus: int
    nodes: int
    load_in_8bit: dict[str, bool]
    placement: dict[str, str]
    devices: list[Estimate]
    zero_stage: int | None = None
    gradient_checkpointing: bool | None = None
    batch_size: int | None = None
    trains: list[str] = field(default_factory=list)
    dtype: str = "bfloat16"
    # PGTS: whether the search trees keep their keys and values (rl.pgts.cacheKv, when it fits).
    kv_cache: bool | None = None
    # Sequences the generator samples at once where a stage samples besides its own work (select's pool,
    # the PRM's Monte-Carlo labels): the most that fits beside what else the stage holds.
    sampling_batch: int | None = None

    @property
    def memory_gib(self) -> float:
        return max(device.total for device in self.devices)

    @property
    def total_memory_gib(self) -> float:
        return sum(device.total for device in self.devices)

    @property
    def precision(self) -> str:
        eight = [role for role, on in self.load_in_8bit.items() if on]
        return _SHORT_DTYPES[self.dtype] if not eight else "8-bit " + "+".join(eight)

    def to_dict(self) -> dict:
        return {
            "gpus": self.gpus,
            "nodes": self.nodes,
            "dtype": self.dtype,
            "load_in_8bit": dict(self.load_in_8bit),
            "zero_stage": self.zero_stage,
            "gradient_checkpointing": self.gradient_checkpointing,
            "batch_size": self.batch_size,
            "kv_cache": self.kv_cache,
            "sampling_batch": self.sampling_batch,
            "trains": list(self.trains),
            "memory_gib": round(self.memory_gib, 2),
            "total_memory_gib": round(self.total_memory_gib, 2),
            "placement": dict(self.placement),
            "breakdown_gib": [
                {name: round(gib, 2) for name, gib in device.parts.items()} for device in self.devices
            ],
        }


@dataclass
class RunPlan:
    device: str
    gpu_memory_gib: float | None
    stages: dict[str, StagePlan]

    @property
    def gpus(self) -> int:
        return max((stage.gpus for stage in self.stages.values()), default=0)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "gpu_memory_gib": self.gpu_memory_gib,
            "gpus": self.gpus,
            "stages": {name: stage.to_dict() for name, stage in self.stages.items()},
        }


@dataclass(frozen=True)
class _Context:
    spec: RunSpec
    gpu_memory_gib: float | None  # None on CPU

    @property
    def budget_gib(self) -> float:
        return float("inf") if self.gpu_memory_gib is None else self.gpu_memory_gib * MEMORY_BUDGET

    def fits(self, devices: list[Estimate]) -> bool:
        return all(device.total <= self.budget_gib for device in devices)


def gpu_memory_gib(spec: RunSpec, override: str | None = None) -> float | None:
    if spec.device == "cpu":
        return None
    if override:
        return quantity_gib(override)
    if spec.gpu.memory:
        return quantity_gib(spec.gpu.memory)
    return GPU_TYPES[spec.gpu.type]


def plan_run(spec: RunSpec, gpu_memory: str | None = None) -> RunPlan:
    """Plan every enabled stage, or raise PlanError naming what would make each one fit."""
    context = _Context(spec, gpu_memory_gib(spec, gpu_memory))
    architectures, issues = _architectures(spec)
    if issues:
        raise PlanError(issues)
    stages, issues = {}, []
    for name in spec.enabled_stages():
        planned = _PLANNERS[name](context, architectures)
        if planned is None:
            issues.append(Issue(f"spec.stages.{name}", _no_fit_message(context, name)))
        else:
            planned.dtype = _stage_dtype(spec, planned)
            stages[name] = planned
    if issues:
        raise PlanError(issues)
    if context.gpu_memory_gib is None:  # a CPU process holds no CUDA context, but its libraries
        for planned in stages.values():
            for device in planned.devices:
                device.overhead_gib = CPU_RUNTIME_OVERHEAD_GIB
    return RunPlan(spec.device, context.gpu_memory_gib, stages)


def _stage_dtype(spec: RunSpec, planned: StagePlan) -> str:
    """The 16-bit (or fp32) dtype of the stage's language models: the widest one when they differ."""
    dtypes = {_model(spec, role).dtype for role in planned.load_in_8bit}
    return max(dtypes, key=lambda dtype: (dtype == "float32", dtype == "bfloat16"))


def _architectures(spec: RunSpec) -> tuple[dict[str, Architecture], list[Issue]]:
    found, issues = {}, []
    for role, attribute in ROLES.items():
        model = getattr(spec.models, attribute)
        if model is None:
            continue
        try:
            found[role] = architecture_for(model)
        except UnknownArchitecture as error:
            issues.append(Issue(f"spec.models.{role}.parameters", str(error)))
    return found, issues


def _model(spec: RunSpec, role: str) -> LanguageModelSpec:
    return getattr(spec.models, ROLES[role])


def _device_name(context: _Context, index: int) -> str:
    return "cpu" if context.gpu_memory_gib is None else f"cuda:{index}"


def _gpu_counts(context: _Context, pinned: int | None, most: int) -> list[int]:
    if context.gpu_memory_gib is None:
        return [0]
    if pinned is not None:
        return [pinned]
    return [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if n <= most]


def _eight_bit_choices(context: _Context, roles: list[str]) -> list[dict[str, bool]]:
    """8-bit settings to try in order: none, then the largest model first, then all.
    A model whose spec pins loadIn8bit keeps that value in every choice."""
    if context.gpu_memory_gib is None:
        return [{role: bool(_model(context.spec, role).load_in_8bit) for role in roles}]
    pinned = {role: _model(context.spec, role).load_in_8bit for role in roles}
    choices = []
    free = [role for role in roles if pinned[role] is None]
    for count in range(len(free) + 1):
        chosen = set(free[:count])
        choice = {role: pinned[role] if pinned[role] is not None else role in chosen for role in roles}
        if choice not in choices:
            choices.append(choice)
    return choices


# ---------------------------------------------------------------- training (sft)

def _plan_sft(context: _Context, archs: dict[str, Architecture]) -> StagePlan | None:
    stage = context.spec.stages.sft
    roles = [role for role in _SFT_ROLES[stage.target]
             if not (role == "rewardModel" and context.spec.reward_model_trained_in() == "select")]
    plan = _plan_training(context, archs, "sft", stage, stage, roles)
    sampling = _generator_sampling(context, "sft")
    if plan is None or sampling is None or "generator" in plan.placement:
        return plan
    return _with_sampling(context, archs, plan, sampling)


_SFT_ROLES = {"generator": ["generator"], "reward-model": ["rewardModel"], "both": ["rewardModel", "generator"]}


def _plan_training(context: _Context, archs: dict[str, Architecture], name: str, hyper: TrainingStageSpec,
                   stage: StageSpec, roles: list[str]) -> StagePlan | None:
    """Training of ``roles`` one after the other with ``hyper``'s batch and optimizer; GPUs and nodes
    come from ``stage`` (the select stage trains the PRM with the sft stage's hyperparameters)."""
    most = context.spec.gpu.max_per_node * stage.nodes
    eight_bit_choices = [choice for choice in _eight_bit_choices(context, roles)
                         if all(_model(context.spec, r).lora or not on for r, on in choice.items())]
    for eight_bit in eight_bit_choices:
        for gpus in _gpu_counts(context, stage.gpus, most):
            for zero, ckpt in _training_options(hyper, gpus):
                devices = [_training_device(context, archs, roles, eight_bit, gpus, zero, ckpt,
                                            hyper.batch_size, hyper.max_seq_length, hyper.optimizer)]
                if context.fits(devices):
                    placement = {role: _spread(context, gpus, stage.nodes) for role in roles}
                    return StagePlan(name, gpus, stage.nodes, eight_bit, placement, devices,
                                     zero_stage=zero, gradient_checkpointing=ckpt,
                                     batch_size=hyper.batch_size, trains=roles)
    return None


def _training_options(stage, gpus: int) -> list[tuple[int, bool]]:
    """(ZeRO stage, gradient checkpointing) to try on ``gpus`` GPUs, fastest first; pinned values stay."""
    zeros = [stage.zero_stage] if stage.zero_stage is not None else ([0] if gpus <= 1 else [2, 3])
    ckpts = [stage.gradient_checkpointing] if stage.gradient_checkpointing is not None else [False, True]
    return list(product(zeros, ckpts))


def _training_device(context, archs, roles, eight_bit, gpus, zero, ckpt, batch, seq, optimizer) -> Estimate:
    """Peak of the worst trained model: models of a stage train one after the other."""
    worst = None
    for role in roles:
        model = _model(context.spec, role)
        setup = TrainingSetup(
            arch=archs[role], dtype=model.dtype, load_in_8bit=eight_bit[role],
            lora_rank=model.lora.r if model.lora else None,
            lora_targets=tuple(model.lora.target_modules) if model.lora else (),
            optimizer=optimizer, micro_batch=batch, seq_len=seq, gradient_checkpointing=ckpt,
            zero_stage=zero, gpus=gpus, lm_head=role == "generator",
        )
        estimate = training_estimate(setup, role)
        if worst is None or estimate.total > worst.total:
            worst = estimate
    return worst


def _spread(context: _Context, gpus: int, nodes: int) -> str:
    if context.gpu_memory_gib is None:
        return "cpu"
    if gpus == 1:
        return "cuda:0"
    per_node = gpus // nodes
    where = f"cuda:0-{per_node - 1}" + (f" on {nodes} nodes" if nodes > 1 else "")
    return f"{where} (data parallel)"


# ---------------------------------------------------------------- rl

def _plan_rl(context: _Context, archs: dict[str, Architecture]) -> StagePlan | None:
    stage = context.spec.stages.rl
    if stage.algorithm == "grpo":
        return _plan_grpo(context, archs)
    generator, reward_model = context.spec.models.generator, context.spec.models.reward_model
    path_tokens = generator.generation.max_prompt_tokens + stage.pgts.max_depth * generator.generation.max_new_tokens
    tree_tokens = generator.generation.max_prompt_tokens + stage.pgts.max_nodes * generator.generation.max_new_tokens
    step_tokens = max(generator.generation.max_prompt_tokens, generator.generation.max_new_tokens)
    policy = context.spec.models.policy

    def generator_side(cached):
        def estimate_for(eight_bit, problems):
            arch = archs["generator"]
            estimate = inference_weights(arch, generator.dtype, eight_bit["generator"], "generator")
            # One path per problem in flight is batched for generation; a cached tree also keeps
            # every node's keys and values, up to a full tree per problem.
            estimate.add("generator kv cache", kv_cache_bytes(arch, problems, path_tokens))
            if cached:
                estimate.add("search tree kv cache", kv_cache_bytes(arch, problems, tree_tokens))
            estimate.add("generator workspace", forward_workspace_bytes(arch, problems * step_tokens))
            return estimate
        return estimate_for

    def scorer_side(cached):
        def estimate_for(eight_bit, problems):
            arch = archs["rewardModel"]
            estimate = inference_weights(arch, reward_model.dtype, eight_bit["rewardModel"], "rewardModel")
            if cached:  # the PRM scores each new step after its path's cache, kept for the whole tree
                estimate.add("rewardModel kv cache", kv_cache_bytes(arch, problems, path_tokens))
                estimate.add("search tree rewardModel kv cache", kv_cache_bytes(arch, problems, tree_tokens))
                estimate.add("rewardModel workspace", forward_workspace_bytes(arch, problems * step_tokens))
            else:  # the PRM reads each path again
                estimate.add("rewardModel workspace", forward_workspace_bytes(arch, problems * path_tokens))
            estimate.add("policy network", policy_network_bytes(
                policy.hidden_size, policy.layers, archs["generator"].hidden, problems * stage.pgts.max_nodes))
            return estimate
        return estimate_for

    # A published PRM reads the whole chat every time (search.py): only the generator's side caches.
    prm_caches = reward_model.step_token is None
    # The cache saves re-encoding paths, but a larger search batch saves more: keep the cache only
    # when it costs no batch.
    plans = [(cached, _place_two_sides(context, "rl", stage, generator_side(cached),
                                       scorer_side(cached and prm_caches), _halvings(stage.pgts.search_batch),
                                       trains=["policy"], with_policy=True))
             for cached in ([True, False] if stage.pgts.cache_kv else [False])]
    cached, best = max(((cached, plan) for cached, plan in plans if plan is not None),
                       key=lambda option: (option[1].batch_size, option[0]), default=(False, None))
    return replace(best, kv_cache=cached) if best else None


def _place_two_sides(context, name, stage, first, second, batches, trains, with_policy) -> StagePlan | None:
    """Generator on one GPU; reward model (and policy) on a second one when one GPU is too small.
    Each model sits whole on one device: explicit placement, never a blind device_map."""
    for eight_bit in _eight_bit_choices(context, ["generator", "rewardModel"]):
        for gpus in _gpu_counts(context, stage.gpus, 2):
            for batch in batches:
                if gpus <= 1:
                    devices = [first(eight_bit, batch).merged(second(eight_bit, batch))]
                    where = {"generator": _device_name(context, 0), "rewardModel": _device_name(context, 0)}
                else:
                    devices = [first(eight_bit, batch), second(eight_bit, batch)]
                    where = {"generator": "cuda:0", "rewardModel": "cuda:1"}
                if with_policy:
                    where["policy"] = where["rewardModel"]
                if context.fits(devices):
                    return StagePlan(name, gpus, 1, eight_bit, where, devices, trains=trains, batch_size=batch)
    return None


def _plan_grpo(context: _Context, archs: dict[str, Architecture]) -> StagePlan | None:
    """rl/grpo.py trains in one process: the generator (trained), its frozen reference and the
    rollouts' KV cache (every sequence of an iteration at once) on cuda:0; the PRM beside them, or
    on cuda:1 when that is what makes the stage fit. Never data-parallel, never ZeRO."""
    stage = context.spec.stages.rl
    generator, reward_model = context.spec.models.generator, context.spec.models.reward_model
    seq = generator.generation.max_prompt_tokens + stage.grpo.max_completion_tokens
    roles = ["generator"] + (["rewardModel"] if reward_model and stage.grpo.prm_weight > 0 else [])
    if stage.nodes > 1 or (stage.gpus or 0) > len(roles):
        return None
    rollouts = stage.problems_per_iteration * stage.grpo.num_generations
    ckpts = [stage.gradient_checkpointing] if stage.gradient_checkpointing is not None else [False, True]
    for eight_bit in _eight_bit_choices(context, roles):
        if eight_bit["generator"] and not generator.lora:
            continue
        for ckpt in ckpts:
            device = _training_device(context, archs, ["generator"], eight_bit, 1, 0, ckpt, stage.batch_size,
                                      seq, stage.optimizer)
            arch = archs["generator"]
            if not generator.lora:  # the frozen reference policy for the KL term
                device = device.merged(inference_weights(arch, generator.dtype, False, "reference"))
            device.add("generator kv cache", kv_cache_bytes(arch, rollouts, seq))
            scorer = inference_weights(archs["rewardModel"], reward_model.dtype, eight_bit["rewardModel"],
                                       "rewardModel") if "rewardModel" in roles else None
            gpu = "cpu" if context.gpu_memory_gib is None else "cuda:0"
            together = device.merged(scorer) if scorer is not None else device
            if stage.gpus in (None, 1) and context.fits([together]):
                return StagePlan("rl", 0 if gpu == "cpu" else 1, 1, eight_bit, {role: gpu for role in roles},
                                 [together], gradient_checkpointing=ckpt, batch_size=stage.batch_size,
                                 trains=["generator"])
            if scorer is not None and gpu != "cpu" and stage.gpus in (None, 2) and context.fits([device, scorer]):
                return StagePlan("rl", 2, 1, eight_bit, {"generator": "cuda:0", "rewardModel": "cuda:1"},
                                 [device, scorer], gradient_checkpointing=ckpt, batch_size=stage.batch_size,
                                 trains=["generator"])
    return None


# ---------------------------------------------------------------- inference stages

def _plan_select(context: _Context, archs: dict[str, Architecture]) -> StagePlan | None:
    """The PRM (trained here with the sft stage's hyperparameters, or only scoring the pool) and, when
    select samples the pool or the PRM's Monte-Carlo labels, the generator on the same GPUs: the two
    work one after the other (the generator is freed first), so the larger of the two must fit."""
    stage = context.spec.stages.select
    sampling = _generator_sampling(context, "select")
    if context.spec.reward_model_trained_in() == "select":
        plan = _plan_training(context, archs, "select", context.spec.stages.sft, stage, ["rewardModel"])
        return _with_sampling(context, archs, plan, sampling) if plan and sampling else plan
    arch, model = archs["rewardModel"], context.spec.models.reward_model
    for eight_bit in _eight_bit_choices(context, ["rewardModel"]):
        for batch in _halvings(stage.batch_size):
            device = inference_weights(arch, model.dtype, eight_bit["rewardModel"], "rewardModel")
            device.add("rewardModel workspace", forward_workspace_bytes(arch, batch * stage.max_seq_length))
            if context.fits([device]):
                gpus = stage.gpus if stage.gpus is not None else (0 if context.gpu_memory_gib is None else 1)
                plan = StagePlan("select", gpus, stage.nodes, eight_bit,
                                 {"rewardModel": _spread(context, max(gpus, 1), stage.nodes)}, [device],
                                 batch_size=batch)
                return _with_sampling(context, archs, plan, sampling) if sampling else plan
    return None


def _generator_sampling(context: _Context, stage: str) -> tuple[int, int] | None:
    """(samples per problem, new tokens) of the generator sampling ``stage`` does besides its own work:
    select's pool, and where the PRM trains, its Monte-Carlo labels and the held-out solutions it is
    judged on (label_sources.py); None when the stage samples nothing."""
    spec, wanted = context.spec, []
    if stage == "select" and spec.stages.select.sample:
        wanted.append((spec.stages.select.sample.samples_per_problem, spec.stages.select.sample.max_new_tokens))
    if spec.reward_model_trained_in() == stage and spec.models.generator is not None:
        monte_carlo = spec.stages.sft.monte_carlo
        samples = max(monte_carlo.samples_per_problem, monte_carlo.completions) \
            if "montecarlo" in spec.stages.sft.prm_labels else 2
        wanted.append((samples, monte_carlo.max_new_tokens))
    return max(wanted) if wanted else None


def _with_sampling(context: _Context, archs: dict[str, Architecture], plan: StagePlan,
                   sampling: tuple[int, int]) -> StagePlan | None:
    """``plan`` with the generator beside its models: weights (in 8-bit where that is what fits and the
    spec leaves it open) and the cache of the largest sampling batch that fits, halving down to one
    problem's samples."""
    samples, new_tokens = sampling
    generator, arch = context.spec.models.generator, archs["generator"]
    evaluation = context.spec.stages.eval
    per_call = context.spec.stages.select.batch_size if plan.stage == "select" else (
        evaluation.batch_size if evaluation else 32)
    seq = generator.generation.max_prompt_tokens + new_tokens
    eight_bits = [generator.load_in_8bit] if generator.load_in_8bit is not None else [False, True]
    for eight_bit in eight_bits:
        for problems in _halvings(per_call):
            sequences = problems * samples
            prompt = generator.generation.max_prompt_tokens
            estimate = inference_weights(arch, generator.dtype, eight_bit, "generator")
            estimate.add("generator kv cache", kv_cache_bytes(arch, sequences, seq, generator.dtype))
            estimate.add("generator workspace", forward_workspace_bytes(arch, sequences * prompt, generator.dtype))
            if context.gpu_memory_gib is None:
                estimate.add("generator attention scores", attention_scores_bytes(arch, sequences, seq))
            devices = [max(device, estimate, key=lambda option: option.total) for device in plan.devices]
            if context.fits(devices):
                placement = {**plan.placement, "generator": next(iter(plan.placement.values()))}
                return replace(plan, placement=placement, devices=devices, sampling_batch=sequences,
                               load_in_8bit={**plan.load_in_8bit, "generator": eight_bit})
    return None


def _plan_eval(context: _Context, archs: dict[str, Architecture]) -> StagePlan | None:
    stage = context.spec.stages.eval
    generator, reward_model = context.spec.models.generator, context.spec.models.reward_model
    samples = stage.k if any(m in stage.methods for m in ("rm@k", "majority@k")) else 1
    seq = generator.generation.max_prompt_tokens + stage.max_new_tokens
    uses_prm = "rm@k" in stage.methods or "pgts" in stage.methods

    def generator_side(eight_bit, batch):
        arch = archs["generator"]
        estimate = inference_weights(arch, generator.dtype, eight_bit["generator"], "generator")
        estimate.add("generator kv cache", kv_cache_bytes(arch, batch * samples, seq))
        estimate.add("generator workspace",
                     forward_workspace_bytes(arch, batch * samples * generator.generation.max_prompt_tokens))
        return estimate

    def scorer_side(eight_bit, batch):
        arch = archs["rewardModel"]
        estimate = inference_weights(arch, reward_model.dtype, eight_bit["rewardModel"], "rewardModel")
        estimate.add("rewardModel workspace", forward_workspace_bytes(arch, batch * samples * seq))
        return estimate

    batches = _halvings(stage.batch_size)
    if uses_prm:
        return _place_two_sides(context, "eval", stage, generator_side, scorer_side, batches, trains=[],
                                with_policy="pgts" in stage.methods)
    return _single_side(context, stage, generator_side, batches)


def _single_side(context, stage, side, batches) -> StagePlan | None:
    for eight_bit in _eight_bit_choices(context, ["generator"]):
        for batch in batches:
            device = side(eight_bit, batch)
            if context.fits([device]):
                gpus = stage.gpus if stage.gpus is not None else (0 if context.gpu_memory_gib is None else 1)
                return StagePlan("eval", gpus, stage.nodes, eight_bit,
                                 {"generator": _device_name(context, 0)}, [device], batch_size=batch)
    return None


def _halvings(batch: int) -> list[int]:
    sizes = [batch]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


_PLANNERS = {"select": _plan_select, "sft": _plan_sft, "rl": _plan_rl, "eval": _plan_eval}


# ---------------------------------------------------------------- when nothing fits

def _no_fit_message(context: _Context, stage: str) -> str:
    from .advice import what_would_fit  # advice re-plans modified specs through this module

    options = what_would_fit(context.spec, stage, context.gpu_memory_gib)
    head = f"does not fit on {context.gpu_memory_gib:g} GiB GPUs with any GPU count, precision or ZeRO stage"
    if not options:
        return head + "; no single change makes it fit: use bigger GPUs or smaller models"
    return head + "; any of these would fit: " + "; ".join(options)
