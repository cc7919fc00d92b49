"""Logging for both processes: plain text lines (the seed's story, readable with grep) or JSON
lines carrying generation, attempt and reason for log pipelines."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

# Extra attributes a record may carry (logger.info(..., extra={"generation": ...})).
CONTEXT_FIELDS = ("generation", "attempt", "reason", "namespace", "name", "pod")


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str, context: Mapping[str, Any]) -> None:
        super().__init__()
        self.component = component
        self.context = dict(context)

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
            **self.context,
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                document[name] = getattr(record, name)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(
    log_format: str, *, component: str, context: Mapping[str, Any] | None = None, level: int = logging.INFO
) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(component, context or {}))
    else:
        prefix = " ".join(f"{key}={value}" for key, value in (context or {}).items())
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{component}{' ' + prefix if prefix else ''}] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
