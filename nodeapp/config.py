"""Node settings: the node's part of the schema in ``tmcommon.settings``, as one frozen object.

``NodeConfig.load()`` reads the defaults, then the environment variables, then explicit
overrides; a bad value raises ``ConfigError`` naming the variable and the accepted range, and the
node refuses to start. The fields (``config.max_workers``, ...) are made from the schema.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import field, make_dataclass
from typing import Any

from tmcommon.settings import NODE, SETTINGS, ConfigError, Setting, read_by, read_settings

__all__ = ["NodeConfig", "ConfigError", "SETTINGS", "Setting"]


def _load(cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None):
    """Defaults, then ``environ`` (``os.environ`` if None), then ``overrides`` by field name."""
    values = read_settings(NODE, os.environ if environ is None else environ, overrides)
    values["node_name"] = values["node_name"] or socket.gethostname()
    return cls(**values)


NodeConfig = make_dataclass(
    "NodeConfig",
    [(name, s.kind, field(default=s.default, repr=not s.secret)) for name, s in read_by(NODE).items()],
    frozen=True,
    namespace={"load": classmethod(_load),
               "__doc__": "Validated settings of one node. Build with ``NodeConfig.load()``."},
)
NodeConfig.__module__ = __name__
