"""Logging set-up: structlog JSON lines, with request context from contextvars.

This is the one sanctioned global (as in structlog's own ``_config``): call
:func:`configure_logging` once at start-up. Standard-library loggers (aiohttp, asyncpg,
grpclib) are rendered as JSON by the same processors.
"""

from __future__ import annotations

import logging
import random
import sys
from typing import Any, Final

import structlog
from structlog.types import EventDict, Processor

# Belt and braces: whatever a caller binds under these names never reaches a log line.
SENSITIVE_KEYS: Final = frozenset(
    {"private_key", "secret", "token", "password", "dsn", "authorization", "credentials"}
)
REDACTED: Final = "[redacted]"


def redact_sensitive(_: Any, __: str, event_dict: EventDict) -> EventDict:
    for key in SENSITIVE_KEYS.intersection(event_dict):
        event_dict[key] = REDACTED
    return event_dict


def is_access_logged(mode: str, sample_rate: float, *, notable: bool) -> bool:
    """Whether a finished request gets an access-log line, over HTTP and gRPC alike: always
    when it is ``notable`` (a failure of ours, a slow call), else as ``mode`` says — ``off``,
    ``sampled`` (at ``sample_rate``) or ``all``. A line per request would cost as much as
    serving it."""
    return notable or mode == "all" or (mode == "sampled" and random.random() < sample_rate)


def configure_logging(level: str = "info", *, stream: Any = None) -> None:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_sensitive,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by ours (configurable: off / sampled / all).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The HTTP/2 header codec under grpclib logs every header it encodes or decodes at debug
    # level, Authorization (an access token's secret) included: never below info.
    logging.getLogger("hpack").setLevel(max(logging.INFO, root.level))
