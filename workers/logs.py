"""Log output for every nxjobs process: JSON lines (containers, log shippers) or readable text.

`NXJOBS_LOG_FORMAT=json` (the image sets it) turns each record into one JSON
object: time, level, logger, process, message, plus Celery's task name/id and the
structured fields of the per-attempt line (job_id, kind, attempt, outcome, code,
latency_ms, attempt_ms) — a fixed list, never arbitrary `extra` data. Text stays
the default for terminals and tests. What is logged is already redacted at the
call site; this module only formats.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

# The `extra` fields emitted: ours (the per-attempt line) and Celery's task ids. Nothing else:
# Celery attaches the raw task arguments to some records as `data`, which must never be printed.
FIELDS = (
    "job_id",
    "kind",
    "attempt",
    "outcome",
    "code",
    "latency_ms",
    "attempt_ms",
    "task_name",
    "task_id",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def apply_format(logger: logging.Logger, log_format: str) -> None:
    """Switch the handlers Celery (or anyone) installed on `logger` to `log_format`;
    text leaves them as set up."""
    if log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def setup_logging(log_format: str, level: str = "INFO") -> None:
    """Root logger to stderr in `log_format` (processes that are not Celery workers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
