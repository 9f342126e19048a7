"""Engines (SVI, NUTS), posterior collection into ArviZ, and diagnostics.

Nothing here knows any particular model: engines take a model and a guide callable (torch
modules called with a :class:`~inference.data.Batch`) and row-aligned data.
"""

from inference.elbos import module_local_params

# Parameters live in their modules, not in Pyro's global store: two models or guides in one
# process never share parameters by name, and a (model, guide) pair trains like any torch
# module (one optimizer, state_dict checkpoints, Lightning).
module_local_params()

from inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from inference.data import Batch, DataError, Field, full_batch, validate_data  # noqa: E402
from inference.svi import FitResult, TrainingDiverged, fit, restore  # noqa: E402

__all__ = [
    "Batch",
    "CheckpointError",
    "DataError",
    "Field",
    "FitResult",
    "TrainingDiverged",
    "fit",
    "full_batch",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
    "validate_data",
]
