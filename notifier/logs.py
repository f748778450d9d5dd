"""Logging: one JSON object per line (``NOTIFIER_LOG_FORMAT=json``) or text, and the request id.

The request id (``X-Request-ID``, accepted from the caller or made here; api/middleware.py) lives
in a context variable for the request's task, so every record logged while serving it carries it;
the jobs a request enqueues carry it too (workers/queue.py), so a worker's records about them do.
Other context (``notice_id``, ``channel``, ``delivery_id``) is passed as ``extra=`` by the code that
logs. Nothing here adds message content: what a record says is what its caller wrote, and callers
never log tokens, bodies or contact targets.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# What a job is about (``job``, ``notice_id``, ``channel``), set while it runs (workers/queue.py).
LOG_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "log_context", default=None
)
# What a caller's X-Request-ID may be: a UUID, a trace id, a ULID -- letters, digits and ._:=+/-,
# at most 128 (no spaces, quotes or "@": nothing that breaks a log line or reads as an address).
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,127}")
SHOWN_TAIL = 4  # characters of a phone number or contact target that logs and the audit log keep
# Fields a record may carry through ``extra=`` that the JSON line shows.
CONTEXT_FIELDS = ("notice_id", "channel", "delivery_id", "unit_id", "job", "http")


def new_request_id() -> str:
    return secrets.token_hex(16)


def accept_request_id(value: str | None) -> str:
    """The caller's id when it is one we can log safely, else a new one."""
    if value is not None and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``record.request_id``, None outside one), and
    the running job's context (``LOG_CONTEXT``) where the record does not say otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        for name, value in (LOG_CONTEXT.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            data["request_id"] = request_id
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


class TextFormatter(logging.Formatter):
    """For a terminal: the request id (and a job's notice and channel) in brackets when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            str(v) for v in (getattr(record, n, None) for n in ("request_id", "notice_id", "channel")) if v
        ]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Set up the root logger once for a process (``notifier`` commands call it first)."""
    # What no line here shows is not gathered for each record (the logging HOWTO's "Optimization"):
    # the caller's file and line (a walk up the stack), the thread, the process and its name.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("arq").setLevel(logging.WARNING)
    quiet_leaky_libraries()


# Libraries that log what they carry, and the least level at which they do not: httpx logs each
# request's URL at INFO (APNs puts the device token in the path); hpack and h2 (HTTP/2) every
# header at DEBUG (``:path`` again, the provider JWT in ``authorization``); httpcore its events.
LEAKY_LOGGERS = {
    "httpx": logging.WARNING,
    "httpcore": logging.INFO,
    "hpack": logging.INFO,
    "h2": logging.INFO,
}


def quiet_leaky_libraries() -> None:
    """Keep the leaky libraries above the levels at which they leak, whatever the root level
    (called by ``configure`` and by the channels that use them)."""
    for name, least in LEAKY_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, least))


def mask(target: str) -> str:
    """A phone number or contact target (e-mail, device token, URL) with all but its last four
    characters hidden -- ``+8613812348000`` -> ``***8000``: enough to tell two apart in a log or
    the audit log, not enough to call or write to. The one rule for masking, used everywhere."""
    tail = target[-SHOWN_TAIL:] if len(target) > 2 * SHOWN_TAIL else ""
    return "***" + tail
