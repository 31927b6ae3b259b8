"""Where problems and reasoning traces come from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .. import benchmarks
from .base import SpecModel


class DatasetSpec(SpecModel):
    """One dataset: GSM8K-format JSONL (question, answer ending '#### N') from the hub, a path, or the
    embedded generator of arithmetic word problems."""

    source: Literal["embedded", "hub", "path"] = Field(
        "embedded", description="embedded (generated, no download), hub (a Hugging Face dataset) or path."
    )
    hub_id: str | None = Field(None, description="Hub dataset id, e.g. openai/gsm8k (source: hub).")
    subset: str | None = Field(None, description="Hub dataset configuration, e.g. main.")
    split: str = Field("train", description="Split to read (train, test, ...).")
    path: str | None = Field(None, description="JSONL file or directory on the run's volume (source: path).")
    limit: int | None = Field(None, ge=1, description="Use at most this many examples.")
    size: int = Field(1000, ge=1, le=10_000_000, description="Examples to generate (source: embedded).")
    seed: int = Field(0, ge=0, description="Seed of the embedded generator.")

    @model_validator(mode="after")
    def _source_fields(self) -> DatasetSpec:
        if self.source == "hub" and not self.hub_id:
            raise ValueError("source hub needs hubId (for example hubId: openai/gsm8k)")
        if self.source == "path" and not self.path:
            raise ValueError("source path needs path (a JSONL file or directory on the run's volume)")
        if self.source != "hub" and self.hub_id:
            raise ValueError(f"hubId is only read with source: hub (source is {self.source}); remove it")
        if self.source != "path" and self.path:
            raise ValueError(f"path is only read with source: path (source is {self.source}); remove it")
        return self


class BenchmarkSpec(DatasetSpec):
    """An evaluation benchmark: a dataset with a name for reports and metrics, the record fields that
    hold its question and answer, and how that answer is stated and checked."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63,
                      description="Benchmark name used in status and metric labels (gsm8k).")
    split: str = Field("test", description="Split to read.")
    benchmark: Literal[tuple(benchmarks.names())] | None = Field(  # type: ignore[valid-type]
        None, description="A known benchmark (gsm8k, math500, minerva-math, gaokao2023en, olympiadbench, "
                          "college-math, mmlu-stem): its hub id, fields, answer format and instruction "
                          "(config/benchmarks/registry.yaml), each overridden by the same field set here. "
                          "With source: embedded, a few problems in its format written by this project.")
    question_field: str = Field("question", min_length=1, description="Record field holding the question.")
    answer_field: str = Field("answer", min_length=1, description="Record field holding the answer (for gsm8k, "
                                                                 "the reasoning ending '#### N').")
    choices_field: str | None = Field(None, min_length=1, description="Record field holding the options of a "
                                                                      "multiple-choice question (answerFormat: "
                                                                      "choice); they are lettered A, B, ...")
    answer_format: Literal["gsm8k", "boxed", "choice"] = Field(
        "gsm8k", description="How the answer is stated and checked: gsm8k ('#### N', compared as numbers), boxed "
                             "(the last \\boxed{...}, compared by mathematical equivalence with math-verify), "
                             "choice (the option's letter).")
    instruction: str | None = Field(
        None, description="Appended to every question of this benchmark instead of the generator's instruction "
                          "(e.g. put the final answer within \\boxed{}).")

    @model_validator(mode="before")
    @classmethod
    def _from_registry(cls, value: Any) -> Any:
        """A named benchmark's registry fields under the ones the spec sets (hub ones only for source hub)."""
        if not isinstance(value, dict) or value.get("benchmark") not in benchmarks.names():
            return value
        known = benchmarks.entry(value["benchmark"])
        hub_fields = ("hubId", "subset", "split")
        source = value.get("source", "hub")
        base = {key: item for key, item in known.items() if source == "hub" or key not in hub_fields}
        return {**base, "source": source, **value}

    @model_validator(mode="after")
    def _choices(self) -> BenchmarkSpec:
        if self.answer_format == "choice" and not self.choices_field:
            raise ValueError("answerFormat choice needs choicesField (the record field listing the options)")
        return self


class StepLabelsSpec(DatasetSpec):
    """Solutions whose steps are labelled right or wrong, for training the PRM (sft.prmLabels: dataset)."""

    source: Literal["hub", "path"] = Field("hub", description="hub (a Hugging Face dataset) or path.")
    format: Literal["trl", "math-shepherd", "prm800k"] = Field(
        "trl", description="trl (prompt, completions: the steps, labels: one boolean per step, as "
                           "trl-lib/math_shepherd and trl-lib/prm800k), math-shepherd (input and label texts with "
                           "'ки' after each step and +/- in label, as peiyi9979/Math-Shepherd) or prm800k (OpenAI's "
                           "JSONL: question.problem and label.steps[].completions[].rating).")


class DataSpec(SpecModel):
    train: DatasetSpec = Field(default_factory=DatasetSpec, description="Problems for SFT, PRM labels and RL.")
    pool: DatasetSpec | None = Field(
        None, description="Raw reasoning-trace pool that the select stage scores (defaults to train)."
    )
    step_labels: StepLabelsSpec | None = Field(
        None, description="Labelled steps for the PRM (used with stages.sft.prmLabels: [dataset, ...]).")
    eval: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="gsm8k-embedded", seed=1, size=200)],
        description="Benchmarks of the eval stage.",
    )
