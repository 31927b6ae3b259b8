"""Supervised fine-tuning: the generator learns to write step-by-step solutions.

Recipe: traces (the select stage's choice when it ran, else the training problems' reference
solutions) -> prompt in the chat template + solution -> loss on the solution tokens only ->
transformers' Trainer (packed padding-free batches, LoRA or full, DeepSpeed ZeRO when planned).
With target reward-model or both, the PRM trains first (prm.py) unless select trained it.
"""

from __future__ import annotations

from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer

from . import models, prm, training
from .checkpoints import StopRequest, is_complete
from .data.problems import Trace, answers_match, reference_trace, solution_text, split_solution
from .data.sources import load_problems, read_selected
from .generation import prompt_ids, solve
from .job import StageJob
from .metrics import StageMetrics
from .stage_result import StageResult

IGNORE = -100
HELD_OUT_PROBLEMS = 64


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    sft = job.spec.stages.sft
    result = StageResult()
    trains_generator = sft.target in ("generator", "both")
    if job.spec.reward_model_trained_in() == "sft":
        span = (0.0, 0.5) if trains_generator else (0.0, 1.0)
        if is_complete(job.paths.model("reward-model")):
            result.details["reward_model"] = {"skipped": "already trained by an earlier attempt"}
        else:
            result.details["reward_model"] = prm.train_reward_model(job, "sft", metrics, stop, span)
        result.checkpoint = str(job.paths.model("reward-model"))
        result.metrics.update({f"prm_{k}": v for k, v in result.details["reward_model"].get("after", {}).items()})
    refines = job.spec.reward_model_refined_on_samples()
    if trains_generator:
        end = 0.6 if refines else 1.0
        result.details["generator"] = train_generator(job, metrics, stop, end)
        result.checkpoint = str(job.paths.model("generator"))
        result.accuracy = result.details["generator"]["held_out_accuracy_after"]
        result.metrics["held_out_accuracy_before"] = result.details["generator"]["held_out_accuracy_before"]
        result.metrics["held_out_accuracy_after"] = result.accuracy
        result.metrics["final_loss"] = result.details["generator"]["final_loss"]
    if refines:
        found = prm.train_on_generator_samples(job, metrics, stop, (0.6, 1.0))
        result.details["reward_model_on_generator_samples"] = found
        result.metrics.update({f"prm_samples_{key}": value for key, value in found["after"].items()})
        result.metrics["prm_samples_position_baseline_step_auroc"] = found["after"]["position_baseline_step_auroc"]
    return result


def train_generator(job: StageJob, metrics: StageMetrics, stop: StopRequest, end: float = 1.0) -> dict:
    sft = job.spec.stages.sft
    separator = job.spec.step_separator
    tokenizer = models.load_tokenizer(job, "generator")
    traces = _training_traces(job)
    model = models.load_generator(job, "sft", trainable=True)
    held_out = _held_out(job)
    before = accuracy(job, model, tokenizer, held_out)

    instruction = job.spec.models.generator.generation.instruction
    dataset = [_example(tokenizer, trace, separator, sft.max_seq_length, instruction) for trace in traces]
    arguments = training.training_arguments(sft, job.stage_plan("sft"), job.paths.checkpoints("sft", "generator"),
                                            job.spec.models.generator.dtype, training.on_gpu())
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=_collator(tokenizer, sft.packing))
    start = 0.5 if job.spec.reward_model_trained_in() == "sft" else 0.0
    outcome = training.train(trainer, "generator", metrics, stop, (start, end))

    model.eval()
    after = accuracy(job, model, tokenizer, held_out)
    metrics.accuracy(job.spec.data.eval[0].name if job.spec.data.eval else "held-out", "train", after,
                     step=outcome.steps)
    models.save_trained(model, tokenizer, job.paths.model("generator"))
    return {
        "examples": len(dataset), "source": "select" if _use_selected(job) else "spec.data.train",
        "steps": outcome.steps, "resumed_from_step": outcome.resumed_from_step, "final_loss": outcome.final_loss,
        "tokens": outcome.tokens,
        "tokens_per_second": outcome.tokens / outcome.seconds if outcome.seconds else None,
        "held_out_problems": len(held_out), "held_out_accuracy_before": before, "held_out_accuracy_after": after,
    }


def _training_traces(job: StageJob) -> list[Trace]:
    if _use_selected(job):
        traces = read_selected(job.paths.selected)
    else:
        traces = [reference_trace(problem) for problem in load_problems(job.spec.data.train, "spec.data.train")]
    limit = job.spec.stages.sft.max_examples
    return traces[:limit] if limit else traces


def _use_selected(job: StageJob) -> bool:
    return "select" in job.spec.enabled_stages()


def _example(tokenizer, trace: Trace, separator: str, max_tokens: int, instruction: str) -> dict:
    prompt = prompt_ids(tokenizer, trace.problem.question, instruction)
    completion = tokenizer(solution_text(trace.steps, trace.answer, separator), add_special_tokens=False)["input_ids"]
    completion = completion + [tokenizer.eos_token_id]
    ids = (prompt + completion)[:max_tokens]
    labels = ([IGNORE] * len(prompt) + completion)[:max_tokens]
    return {"input_ids": ids, "labels": labels}


def _collator(tokenizer, packing: bool):
    if packing:
        # One row of concatenated examples with position ids restarting per example: no padding,
        # and the attention mask is built from the position ids so examples never see each other.
        return DataCollatorWithFlattening()
    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)


def _held_out(job: StageJob):
    if not job.spec.data.eval:
        return []
    benchmark = job.spec.data.eval[0]
    return load_problems(benchmark, "spec.data.eval[0]")[:HELD_OUT_PROBLEMS]


def accuracy(job: StageJob, model, tokenizer, problems) -> float:
    """Greedy pass@1 on held-out problems."""
    if not problems:
        return float("nan")
    generation = job.spec.models.generator.generation
    texts = solve(model, tokenizer, [p.question for p in problems], samples=1,
                  max_new_tokens=_max_new_tokens(job), max_prompt_tokens=generation.max_prompt_tokens,
                  temperature=0.0, top_p=1.0, batch_size=32, instruction=generation.instruction)
    separator = job.spec.step_separator
    return sum(answers_match(split_solution(t[0], separator)[1], p.answer) for t, p in zip(texts, problems)) / len(problems)


def _max_new_tokens(job: StageJob) -> int:
    evaluation = job.spec.stages.eval
    return evaluation.max_new_tokens if evaluation else job.spec.models.generator.generation.max_new_tokens
