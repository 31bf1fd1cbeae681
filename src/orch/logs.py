"""Logging: stdlib loggers rendered by structlog, as key=value lines or one JSON object a line.

What a job binds with `structlog.contextvars` (the task's key, its stage, the job, the agent
run) is added to every line logged inside it, by the stdlib loggers orch uses as much as by
structlog's own.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

import structlog

if TYPE_CHECKING:
    from orch.config import LogSettings


def configure(
    level: str = "INFO",
    json: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Send every log line to `stream` (stderr by default) at `level` and above."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    pre_chain: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # a JSON line carries a traceback as text; the console renderer lays it out itself
    last: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, renderer] if json else [renderer]
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
            foreign_pre_chain=pre_chain,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs each request's whole URL at INFO: a hook's URL may hold its secret, and a
    # Bot API URL holds the token
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*pre_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def configure_from(settings: LogSettings, stream: TextIO | None = None) -> None:
    """`configure` as the `log:` settings say."""
    configure(settings.level, json=settings.format == "json", stream=stream)
