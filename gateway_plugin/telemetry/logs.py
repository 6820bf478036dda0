"""Log output: one JSON object per line for machines, one readable line for people at a terminal.

Request lines carry their fields in `record.distinfer` (request_id, trace_id, model, node,
attempts, mode, latency_ms, ...): a fixed set chosen by the code that logs, never request bodies,
tensors or tokens. The plugin only emits records (logger `distinfer.requests`, INFO); the host
decides where they go, and `configure_logging` is what the `distinfer` command uses.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = ["REQUEST_LOGGERS", "JsonFormatter", "TextFormatter", "configure_logging"]

REQUEST_LOGGERS = ("distinfer.requests", "distinfer.node.requests")
LogFormat = Literal["auto", "json", "text"]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "distinfer", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...request fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`12:00:01.234 INFO  distinfer.requests  POST /inference 200  model=digits node=node-1 ...`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        text = f"{stamp} {record.levelname:<5} {record.name}  {record.getMessage()}"
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items() if value is not None)
        if fields:
            text = f"{text}  {fields}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def configure_logging(
    fmt: LogFormat = "auto", *, requests: bool = True, stream: IO[str] | None = None, level: int = logging.WARNING
) -> logging.Handler:
    """Root handler on `stream` (stderr): text at a terminal, JSON otherwise; request lines at INFO."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if requests else logging.WARNING)
    return handler
