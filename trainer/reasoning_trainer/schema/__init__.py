"""The run schema: the single source of truth for the CRD, the CLI, the operator and the trainer.

Importable without torch.
"""

from .errors import Issue, RunValidationError
from .run import (
    GROUP, KIND, PLURAL, SHORT_NAME, STAGE_ORDER, VERSION,
    ReasoningTraining, RunSpec, RunStatus,
)
from .validate import load_run_file, validate_resource, validate_spec

__all__ = [
    "GROUP", "KIND", "PLURAL", "SHORT_NAME", "STAGE_ORDER", "VERSION",
    "Issue", "ReasoningTraining", "RunSpec", "RunStatus", "RunValidationError",
    "load_run_file", "validate_resource", "validate_spec",
]
