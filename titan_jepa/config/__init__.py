"""Configuration: one dataclass per TOML section (sections.py, each with its own checks),
loading TOML files and ``--section.key value`` overrides (load.py), the model shape of a run
(model.py) and of a Hugging Face config.json (hf_config.py), dtype names (dtypes.py)."""

from titan_jepa.config.load import (  # noqa: F401 (the package's API)
    MOVED,
    REMOVED,
    choices,
    config_from_argv,
    keep_best_mode,
    load_config,
    parse_cli_overrides,
    validate,
    write_config,
)
from titan_jepa.config.sections import (  # noqa: F401
    ActivationCheckpoint,
    Checkpoint,
    Compile,
    Data,
    Float8,
    Job,
    JobConfig,
    Jepa,
    Lora,
    LRScheduler,
    Metrics,
    Model,
    Optimizer,
    Parallelism,
    Profiling,
    Stp,
    Tokenizer,
    Training,
    Validation,
)
from titan_jepa.errors import ConfigError  # noqa: F401
