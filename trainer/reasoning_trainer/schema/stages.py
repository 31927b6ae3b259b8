"""The four stages of a run and their hyperparameters.

Every stage may pin its GPU count; otherwise the planner chooses it (and 8-bit,
ZeRO and gradient checkpointing) from model sizes and GPU memory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import SpecModel


class StageSpec(SpecModel):
    enabled: bool = Field(True, description="Run this stage.")
    gpus: int | None = Field(
        None, ge=0, le=1024, description="GPUs for this stage in total. Omit to let the planner decide."
    )
    nodes: int = Field(1, ge=1, le=128, description="Nodes the stage spans (multi-node uses torchrun).")
    checkpoint_every: int = Field(200, ge=1, description="Save a resumable checkpoint every N steps.")


class TrainingStageSpec(StageSpec):
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the training data.")
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per GPU per optimizer micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-steps per optimizer step.")
    learning_rate: float = Field(2e-5, gt=0, le=1.0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_seq_length: int = Field(512, ge=16, le=131072, description="Longest training sequence in tokens.")
    optimizer: Literal["adamw", "adamw-8bit"] = Field("adamw", description="Optimizer (adamw-8bit: bitsandbytes).")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in backward. Omit to let the planner decide."
    )
    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None, description="DeepSpeed ZeRO stage. Omit to let the planner decide."
    )


class PoolSamplingSpec(SpecModel):
    """The raw pool as sampled solutions: samplesPerProblem of the generator's solutions to every
    problem of data.pool (whose reference solutions are never used)."""

    samples_per_problem: int = Field(4, ge=1, le=256, description="Solutions sampled per problem.")
    temperature: float = Field(1.0, gt=0.0, le=5.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(256, ge=1, le=131072, description="Longest sampled solution.")


class SelectSpec(StageSpec):
    """Score a raw trace pool with the PRM and keep the best (ReasonFlux-PRM data selection)."""

    sample: PoolSamplingSpec | None = Field(
        None, description="Sample the pool from the generator (the model's own traces, as in rejection-sampling "
                          "fine-tuning). Omit to score data.pool's own traces as they are, such as a stronger "
                          "model's traces in GSM8K format.")

    keep_top_k: int | None = Field(None, ge=1, description="Keep this many best-scored traces.")
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0, description="Keep this fraction of the pool.")
    max_per_problem: int | None = Field(
        None, ge=1, description="Keep at most this many traces of each problem, its best-scored: without it, a "
                                "pool of several samples per problem loses its hard problems, since the traces "
                                "of easy ones score highest (1 with samplesPerProblem N: the PRM's best of N).")
    batch_size: int = Field(16, ge=1, le=65536, description="Traces scored per forward pass.")
    max_seq_length: int = Field(1024, ge=16, le=131072, description="Longest trace scored, in tokens.")
    aggregate: Literal["mean", "min", "last", "product"] = Field(
        "mean", description="How the reasoning steps' scores become the step-level reward."
    )
    step_weight: float = Field(0.5, ge=0.0, description="Weight of the step-level reward in a trace's score.")
    trajectory_weight: float = Field(
        0.5, ge=0.0, description="Weight of the trajectory-level reward: the PRM's verdict on the final answer "
                                 "line, which reads the whole solution (ReasonFlux-PRM's trajectory reward).")

    @model_validator(mode="after")
    def _one_rule(self) -> SelectSpec:
        # A disabled stage keeps nothing: "select: {enabled: false}" must not ask how much to keep.
        if (self.keep_top_k is None) == (self.keep_fraction is None) and (self.enabled or self.keep_top_k):
            raise ValueError("set exactly one of keepTopK and keepFraction (for example keepTopK: 1000)")
        if self.step_weight + self.trajectory_weight <= 0:
            raise ValueError("stepWeight and trajectoryWeight cannot both be 0: a trace needs a score")
        return self


class MonteCarloSpec(SpecModel):
    """Math-Shepherd's step labels: from each step of the generator's own samples, ``completions``
    continuations; the step is right if any of them reaches the answer (hard estimation)."""

    problems: int = Field(256, ge=1, le=1_000_000, description="Training problems whose solutions are sampled.")
    samples_per_problem: int = Field(4, ge=1, le=64, description="Solutions sampled per problem.")
    completions: int = Field(4, ge=1, le=64, description="Continuations sampled from each step prefix.")
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Longest sampled solution or continuation.")
    epochs: float = Field(1.0, gt=0.0, le=100.0, description="Epochs of PRM training on these labels.")


class SftSpec(TrainingStageSpec):
    """Supervised fine-tuning of the generator and/or training the PRM on step labels."""

    target: Literal["generator", "reward-model", "both"] = Field(
        "generator", description="Which model to train; both trains the generator first, then the reward model "
                                 "(whose Monte-Carlo labels then come from the trained generator).")
    packing: bool = Field(True, description="Pack sequences padding-free instead of padding to the longest.")
    max_examples: int | None = Field(None, ge=1, description="Use at most this many training examples.")
    incorrect_per_problem: int = Field(
        3, ge=0, le=64, description="Corrupted copies of each reference solution among synthetic step labels.")
    prm_labels: list[Literal["montecarlo", "synthetic", "dataset"]] = Field(
        default_factory=lambda: ["montecarlo"], min_length=1,
        description="Where the PRM's step labels come from, one or more of: montecarlo (Math-Shepherd: the "
                    "generator's own sampled solutions, each step labelled by whether continuations from it reach "
                    "the answer), synthetic (reference solutions and copies with one number changed), dataset "
                    "(labelled steps read from data.stepLabels: TRL, Math-Shepherd or PRM800K format).")
    prm_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="Peak learning rate of the PRM's training (a new head on a pretrained "
                                         "model usually wants more than fine-tuning the generator); "
                                         "learningRate when omitted.")
    prm_soft_labels: bool = Field(
        False, description="Train on each Monte-Carlo step's share of continuations that reach the answer (soft "
                           "labels) instead of whether any does (hard labels, Math-Shepherd's default).")
    monte_carlo: MonteCarloSpec = Field(default_factory=MonteCarloSpec)
    compare_with_pool: bool = Field(
        False, description="After training on the select stage's choice, also fine-tune a copy of the generator "
                           "on the whole pool and report both (time, held-out accuracy) side by side; the copy "
                           "is not kept.")

    @model_validator(mode="after")
    def _labels_once(self) -> SftSpec:
        if len(set(self.prm_labels)) != len(self.prm_labels):
            raise ValueError("prmLabels: name each source once")
        return self


class PpoSpec(SpecModel):
    epochs: int = Field(4, ge=1, le=100, description="PPO epochs over each batch of rollouts.")
    clip: float = Field(0.2, gt=0.0, le=1.0, description="Clipping range of the probability ratio.")
    value_coef: float = Field(0.5, ge=0.0, le=100.0, description="Weight of the value loss.")
    entropy_coef: float = Field(0.01, ge=0.0, le=10.0, description="Weight of the entropy bonus.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda.")
    gamma: float = Field(0.99, ge=0.0, le=1.0, description="Discount factor.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient-norm clip.")


class ActionCostsSpec(SpecModel):
    """What each action costs (subtracted from its reward), as in the PGTS paper."""

    expand: float = Field(0.1, ge=0.0, description="Cost of a child of the current step.")
    branch: float = Field(0.2, ge=0.0, description="Cost of a sibling of the current step.")
    backtrack: float = Field(0.5, ge=0.0, description="Cost of returning to the parent step.")
    terminate: float = Field(0.0, ge=0.0, description="Cost of stopping at an answer.")


class PgtsRewardsSpec(SpecModel):
    """An action's reward: minus its cost, plus the PRM shaping prmWeight x prmScale x (gamma x
    score(next node) - score(current node)) (potential-based: along any path it sums to what the
    path started from, so growing the tree does not pay), plus the outcome on the last action."""

    correct: float = Field(10.0, description="Final reward for a correct answer.")
    wrong: float = Field(-5.0, description="Final reward for a wrong answer (or no answer).")
    action_costs: ActionCostsSpec = Field(default_factory=ActionCostsSpec)
    invalid_action: float = Field(-1.0, le=0.0, description="Reward for an expansion that produced no step.")
    prm_scale: float = Field(1.0, ge=0.0, description="Scale of the PRM shaping.")
    outcome_weight: float = Field(1.0, ge=0.0, description="Weight of the final (outcome) reward.")
    prm_weight: float = Field(1.0, ge=0.0, description="Weight of the PRM shaping.")

    @property
    def outcome_scale(self) -> float:
        """The unit the policy's value head predicts returns in: the larger outcome reward."""
        return max(abs(self.correct), abs(self.wrong)) * self.outcome_weight or 1.0


class PgtsSpec(SpecModel):
    """Policy-guided tree search: expand / branch / backtrack / terminate over reasoning steps."""

    max_depth: int = Field(12, ge=1, le=256, description="Deepest reasoning path.")
    max_nodes: int = Field(60, ge=2, le=10000, description="Most nodes in one problem's tree.")
    temperature: float = Field(0.8, gt=0.0, le=5.0, description="Generator temperature during search.")
    greedy_first_step: bool = Field(
        True,
        description="The first step under a node is the generator's most likely one (greedy decoding); every "
                    "further step there (branch, or expand after a backtrack) is sampled at temperature. A policy "
                    "that only expands then reproduces greedy decoding, and search can only add alternatives to it; "
                    "false samples every step.",
    )
    search_batch: int = Field(
        4, ge=1, le=4096,
        description="Most problems searched at once (batched generation and PRM scoring across trees); "
                    "the planner lowers it when memory is short.",
    )
    cache_kv: bool = Field(
        True,
        description="Keep each search node's keys and values, the generator's and the PRM's (a published PRM "
                    "reads every path again), so that a new step is generated and scored after its path without "
                    "re-encoding it. The planner keeps them only where they cost no search batch on these GPUs; "
                    "false always re-encodes paths.",
    )
    rewards: PgtsRewardsSpec = Field(default_factory=PgtsRewardsSpec)

    @model_validator(mode="after")
    def _nodes_cover_depth(self) -> PgtsSpec:
        if self.max_nodes < self.max_depth:
            raise ValueError(
                f"maxNodes ({self.max_nodes}) is below maxDepth ({self.max_depth}): no path could reach "
                f"full depth; raise maxNodes to at least {self.max_depth}"
            )
        return self


class GrpoSpec(SpecModel):
    """Group relative policy optimisation of the generator with PRM rewards (ReasonFlux-PRM style)."""

    num_generations: int = Field(6, ge=2, le=256, description="Solutions sampled per prompt (the group).")
    kl_coef: float = Field(0.001, ge=0.0, le=10.0, description="Weight of the KL penalty to the reference.")
    clip: float = Field(0.2, gt=0.0, le=1.0, description="Clipping range of the probability ratio.")
    correctness_weight: float = Field(1.0, ge=0.0, description="Weight of answer correctness in the reward.")
    prm_weight: float = Field(0.5, ge=0.0, description="Weight of the PRM trajectory score in the reward.")
    prm_aggregate: Literal["min", "mean", "last", "product"] = Field(
        "min", description="How a completion's step scores become its PRM reward: min (as good as its weakest "
                           "step), mean, last (the verdict on the final answer) or product.")
    max_completion_tokens: int = Field(512, ge=1, le=131072, description="Longest sampled solution.")
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = Field(
        "dapo", description="Loss normalisation: dapo (mean over every token of the batch, the default), grpo "
                            "(each completion's token mean, then the mean: favours long wrong answers), dr_grpo "
                            "(token sum / (completions x maxCompletionTokens): no length bias).")
    scale_rewards: bool = Field(
        False, description="Divide advantages by the group's standard deviation (DeepSeekMath). Off by default "
                           "(Dr. GRPO): it blows PRM noise in a uniform group up to advantages of +-1.")
    drop_uniform_groups: bool = Field(
        True, description="Skip groups whose answers are all right or all wrong (DAPO): no correctness signal.")


class RlSpec(TrainingStageSpec):
    """Policy optimisation: GRPO on the generator, or PGTS with a learned tree-search policy.

    batchSize is the update minibatch: completions per GPU for GRPO, trajectories for PGTS's PPO.
    """

    algorithm: Literal["grpo", "pgts"] = Field("pgts", description="grpo or pgts.")
    iterations: int = Field(50, ge=1, le=1_000_000, description="Rollout-and-update iterations.")
    problems_per_iteration: int = Field(32, ge=1, le=65536, description="Problems rolled out per iteration.")
    eval_problems: int = Field(
        64, ge=0, le=100_000,
        description="Held-out problems of each eval benchmark (its first ones, never trained on) scored before "
                    "and after RL, and every evalEvery iterations: GRPO by pass@1 and RM@k of the generator it "
                    "trains, PGTS by the search's accuracy. The stage's accuracy is the first benchmark's after "
                    "RL. 0: none.")
    eval_every: int | None = Field(
        None, ge=1, description="Also score the held-out problems every this many iterations: accuracy during "
                                "RL against iterations and RL FLOPs (the stage's results, metrics and report).")
    ppo: PpoSpec = Field(default_factory=PpoSpec)
    pgts: PgtsSpec = Field(default_factory=PgtsSpec)
    grpo: GrpoSpec = Field(default_factory=GrpoSpec)


class EvalSpec(StageSpec):
    """pass@1, RM@k (best of k by the PRM), majority@k and PGTS decoding on the benchmarks."""

    methods: list[Literal["pass@1", "rm@k", "majority@k", "pgts"]] = Field(
        default_factory=lambda: ["pass@1", "rm@k"], min_length=1, description="Decoding methods to score."
    )
    k: int = Field(8, ge=1, le=1024, description="Samples per problem for rm@k and majority@k.")
    rm_aggregate: Literal["min", "mean", "last", "product"] = Field(
        "min", description="How rm@k ranks a sample by its step scores: min (as good as its weakest step, the "
                           "usual choice), mean, last (the verdict on the final answer) or product (all steps "
                           "right, if independent).")
    batch_size: int = Field(16, ge=1, le=65536, description="Problems decoded together.")
    max_new_tokens: int = Field(512, ge=1, le=131072, description="Longest generated solution.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature for k > 1 samples.")

    @model_validator(mode="after")
    def _k_for_best_of(self) -> EvalSpec:
        sampled = [m for m in self.methods if m in ("rm@k", "majority@k")]
        if sampled and self.k < 2:
            raise ValueError(f"{', '.join(sampled)} needs k of at least 2 samples per problem, got k: {self.k}")
        if sampled and self.temperature == 0:
            raise ValueError(f"{', '.join(sampled)} samples k solutions: temperature must be above 0")
        return self


class StagesSpec(SpecModel):
    select: SelectSpec | None = Field(None, description="PRM-based data selection.")
    sft: SftSpec | None = Field(None, description="Supervised fine-tuning / PRM training.")
    rl: RlSpec | None = Field(None, description="Policy optimisation (GRPO or PGTS).")
    eval: EvalSpec | None = Field(None, description="Evaluation: pass@1, RM@k, majority@k, PGTS.")
