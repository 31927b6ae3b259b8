"""Plans GPUs, precision, ZeRO and placement for every stage from model sizes and GPU memory."""

from .plan import PlanError, RunPlan, StagePlan, gpu_memory_gib, plan_run

__all__ = ["PlanError", "RunPlan", "StagePlan", "gpu_memory_gib", "plan_run"]
