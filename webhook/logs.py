"""Logging: text for people, or JSON lines (``SCORER_LOG_FORMAT=json``) for machines.

Each webhook's outcome is one line with its ``request_id`` and ``outcome`` as fields. Payload
bodies and secrets are never logged.

Outside strings (request ids, plugins' scorer names, error texts) reach the logs, so a text line
escapes every control character in its message and field values (C0, DEL, C1, and U+2028/U+2029,
which some viewers break lines on): ``\n`` becomes the two characters ``\\n``, NUL ``\\x00``.
No one can forge a line, and the file stays text. Tracebacks are ours and keep their lines. JSON
lines are safe as they are: JSON escapes control characters in strings. Fields whose value is
None are left out of both, so a line never says ``feedback=None``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

__all__ = ["escape", "event", "setup_logging"]

# Attributes every LogRecord has (and uvicorn's ANSI-coloured copy of its message); anything
# else was passed as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


class JSONFormatter(logging.Formatter):
    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **({"pid": record.process} if self.pid else {}),
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


_CONTROL = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def escape(text: str) -> str:
    """``text`` with every control character written as a backslash escape."""
    return text.translate(_CONTROL)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line before any traceback: the message, then ``key=value`` fields, escaped."""
        text = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return escape(text)


def _text(value: object) -> str:
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)


def setup_logging(level: str = "info", fmt: str = "text", *, pid: bool = False) -> None:
    """Log to stderr at ``level``; ``pid``: each line names its process (``serve --workers``,
    whose processes share one stream), as ``name[pid]`` in text and a ``pid`` field in JSON."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JSONFormatter(pid=pid)
        if fmt == "json"
        else TextFormatter(
            f"%(asctime)s %(levelname)s %(name)s{'[%(process)d]' if pid else ''}: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(
    logger: logging.Logger, message: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one event with structured fields (``request_id``, ``outcome``, ...)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra=fields)
