"""Structured JSON logging through structlog, for every KCM process."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    stream: TextIO | None = None, level: int | str = logging.INFO, *, cache: bool = True
) -> None:
    """Render every structlog event as one JSON object per line on ``stream`` (stdout).

    Events below ``level`` are dropped before any formatting work. Each line carries the
    event name, ``level``, an ISO-8601 UTC ``timestamp`` and the bound fields, keys sorted.
    ``cache=False`` lets tests reconfigure loggers that were already used.
    """
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream if stream else sys.stdout),
        cache_logger_on_first_use=cache,
    )
