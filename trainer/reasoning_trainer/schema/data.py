"""Where problems and reasoning traces come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    """An evaluation benchmark: a dataset with a name for reports and metrics."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63,
                      description="Benchmark name used in status and metric labels (gsm8k).")
    split: str = Field("test", description="Split to read.")


class DataSpec(SpecModel):
    train: DatasetSpec = Field(default_factory=DatasetSpec, description="Problems for SFT, PRM labels and RL.")
    pool: DatasetSpec | None = Field(
        None, description="Raw reasoning-trace pool that the select stage scores (defaults to train)."
    )
    eval: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="gsm8k-embedded", seed=1, size=200)],
        description="Benchmarks of the eval stage.",
    )
