"""Supervised fine-tuning: the generator learns to write step-by-step solutions.

Recipe: traces (the select stage's choice when it ran, else the training problems' reference
solutions) -> prompt in the chat template + solution -> loss on the solution tokens only ->
transformers' Trainer (packed padding-free batches, LoRA or full, DeepSpeed ZeRO when planned).
With compareWithPool, a copy of the starting generator is then trained the same way on the whole
pool the select stage scored, and both are measured on the same held-out problems: what selection
saves and what it wins. With target reward-model or both (and no select stage to train it), the
PRM trains last (prm.py), so that its Monte-Carlo labels come from the generator just trained.
"""

from __future__ import annotations

from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer

from . import models, prm, training
from .checkpoints import StopRequest, is_complete
from .data.problems import Trace, reference_trace, solution_text, split_solution
from .data.sources import load_problems, read_selected
from .generation import prompt_ids, solve
from .job import StageJob
from .metrics import StageMetrics
from .stage_result import StageResult

IGNORE = -100
HELD_OUT_PROBLEMS = 200


def run(job: StageJob, metrics: StageMetrics, stop: StopRequest) -> StageResult:
    sft = job.spec.stages.sft
    result = StageResult()
    trains_generator = sft.target in ("generator", "both")
    trains_prm = job.spec.reward_model_trained_in() == "sft"
    compares = trains_generator and sft.compare_with_pool and _use_selected(job)
    ends = iter([0.3, 1.0] if compares else [0.5, 1.0] if trains_generator and trains_prm else [1.0])
    if trains_generator:
        end = next(ends)
        result.details["generator"] = train_generator(job, metrics, stop, (0.0, end), _training_traces(job))
        result.checkpoint = str(job.paths.model("generator"))
        result.accuracy = result.details["generator"]["held_out_accuracy_after"]
        result.metrics["held_out_accuracy_before"] = result.details["generator"]["held_out_accuracy_before"]
        result.metrics["held_out_accuracy_after"] = result.accuracy
        result.metrics["final_loss"] = result.details["generator"]["final_loss"]
        if compares:
            whole = train_generator(job, metrics, stop, (end, next(ends)), read_selected(job.paths.pool),
                                    copy="generator-whole-pool")
            result.details["whole_pool"] = whole
            result.metrics["whole_pool_held_out_accuracy"] = whole["held_out_accuracy_after"]
            result.metrics["whole_pool_seconds"] = whole["seconds"]
            result.metrics["selected_seconds"] = result.details["generator"]["seconds"]
    if trains_prm:
        if is_complete(job.paths.model("reward-model")):
            result.details["reward_model"] = {"skipped": "already trained by an earlier attempt"}
        else:
            span = (0.5, 1.0) if trains_generator else (0.0, 1.0)
            result.details["reward_model"] = prm.train_reward_model(job, "sft", metrics, stop, span)
        result.checkpoint = result.checkpoint or str(job.paths.model("reward-model"))
        result.metrics.update({f"prm_{k}": v for k, v in result.details["reward_model"].get("after", {}).items()})
    return result


def train_generator(job: StageJob, metrics: StageMetrics, stop: StopRequest, span: tuple[float, float],
                    traces: list[Trace], copy: str | None = None) -> dict:
    """Fine-tune the generator on ``traces`` and measure it on held-out problems before and after. With
    ``copy``, a throwaway copy of the starting generator is trained (its own checkpoints) and not kept."""
    sft = job.spec.stages.sft
    separator = job.spec.step_separator
    tokenizer = models.load_tokenizer(job, "generator")
    model = models.load_generator(job, "sft", trainable=True, fresh=copy is not None)
    held_out = _held_out(job)
    before = accuracy(job, model, tokenizer, held_out)

    instruction = job.spec.models.generator.generation.instruction
    dataset = [example(tokenizer, trace, separator, sft.max_seq_length, instruction) for trace in traces]
    arguments = training.training_arguments(sft, job.stage_plan("sft"),
                                            job.paths.checkpoints("sft", copy or "generator"),
                                            job.spec.models.generator.dtype, training.on_gpu())
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset,
                      data_collator=_collator(tokenizer, sft.packing))
    outcome = training.train(trainer, "generator", metrics, stop, span)

    model.eval()
    after = accuracy(job, model, tokenizer, held_out)
    if copy is None:
        metrics.accuracy(job.spec.data.eval[0].name if job.spec.data.eval else "held-out", "train", after,
                         step=outcome.steps)
        models.save_trained(model, tokenizer, job.paths.model("generator"))
    return {
        "examples": len(dataset), "source": ("select: whole pool" if copy else "select") if _use_selected(job)
        else "spec.data.train",
        "steps": outcome.steps, "resumed_from_step": outcome.resumed_from_step, "final_loss": outcome.final_loss,
        "tokens": outcome.tokens, "seconds": round(outcome.seconds, 1),
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


def example(tokenizer, trace: Trace, separator: str, max_tokens: int, instruction: str = "") -> dict:
    """The chat prompt and the trace's solution; the loss is on the solution (and end of turn) only."""
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
    return sum(p.solved_by(split_solution(t[0], separator, p.answer_format)[1])
               for t, p in zip(texts, problems)) / len(problems)


def _max_new_tokens(job: StageJob) -> int:
    evaluation = job.spec.stages.eval
    return evaluation.max_new_tokens if evaluation else job.spec.models.generator.generation.max_new_tokens
