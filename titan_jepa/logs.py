"""The one logging setup of every entry point (training, eval, seed checkpoint, tools)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "[titan_jepa %(asctime)s] %(message)s"


def setup_logging(rank: int = 0, stream: TextIO | None = None) -> None:
    """INFO on rank 0, WARNING on the other ranks, as ``[titan_jepa HH:MM:SS] message``
    lines on ``stream`` (default stdout)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S",
                        stream=sys.stdout if stream is None else stream, force=True)
