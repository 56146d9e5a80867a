"""Logging set-up for node and worker processes: plain lines, or JSON lines with LOG_FORMAT=json.

Process-level variables (not node settings): LOG_LEVEL (default info) and LOG_FORMAT (text or json).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

#: The environment variables read here; AWS mode passes them on to the nodes.
LOG_VARIABLES = ("LOG_LEVEL", "LOG_FORMAT")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once, from LOG_LEVEL and LOG_FORMAT unless given."""
    level = (level or os.environ.get("LOG_LEVEL", "info")).upper()
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("apscheduler", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
