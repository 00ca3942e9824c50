"""Logger setup: console on every rank's first logger, a log file per rank under output_dir."""
from __future__ import annotations

import logging
import os
import sys

from .comm import get_rank

__all__ = ["setup_logger"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


def setup_logger(output_dir: str | None = None, name: str = "eva_core",
                 level: int = logging.INFO) -> logging.Logger:
    """Configure the ``name`` logger once per process.

    Rank 0 logs to stdout; every rank writes ``log.txt`` (rank 0) or ``log.txt.rank{r}`` in
    ``output_dir`` when it is given. Calling it again with the same output_dir does nothing.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    rank = get_rank()
    tags = {getattr(h, "_eva_tag", None) for h in logger.handlers}
    fmt = logging.Formatter(_FORMAT, datefmt="%m/%d %H:%M:%S")
    if rank == 0 and "console" not in tags:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(fmt)
        h._eva_tag = "console"  # type: ignore[attr-defined]
        logger.addHandler(h)
    if output_dir:
        path = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        if f"file:{path}" not in tags:
            os.makedirs(output_dir, exist_ok=True)
            h = logging.FileHandler(path)
            h.setFormatter(fmt)
            h._eva_tag = f"file:{path}"  # type: ignore[attr-defined]
            logger.addHandler(h)
    return logger
