"""structlog set-up of every long-running process (API, worker, S3 event bridge): one JSON object
per line on stderr (settings.log_format `console`: plain text); contextvars bound by a role (the
worker's `image_id`) are on every line. Standard-library loggers (uvicorn, botocore, urllib3,
httpx...) go through the same renderer."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor

from udagram.settings import Settings


def configure(settings: Settings) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    level = level if isinstance(level, int) else logging.INFO
    renderer = (structlog.processors.JSONRenderer() if settings.log_format == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))  # libraries: warnings and errors only
