"""Checkpoints and weights: saving and resuming a run (manager.py), the model-only export and
seed checkpoints (export.py), the files of a checkpoint folder and their integrity manifest
(files.py), loading weights in any saved form (weights.py), Hugging Face tensors (hf.py) and
torchtitan's names (torchtitan_names.py). docs/checkpoints.md describes the layout."""

from titan_jepa.checkpoint.files import checkpoint_folder  # noqa: F401 (the package's API)
from titan_jepa.checkpoint.export import create_seed_checkpoint, export_model  # noqa: F401
from titan_jepa.checkpoint.manager import Checkpointer  # noqa: F401
from titan_jepa.checkpoint.weights import complete_checkpoints  # noqa: F401
from titan_jepa.errors import CheckpointError  # noqa: F401
