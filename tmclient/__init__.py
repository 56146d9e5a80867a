"""A client for the task manager: ``Client`` for Python code, ``tm`` for the terminal."""

from tmclient.client import (
    ApiError,
    BadBody,
    BadNodes,
    Client,
    EnqueueIncomplete,
    NodesUnreachable,
    TaskManagerError,
    WaitTimeout,
)

__all__ = ["ApiError", "BadBody", "BadNodes", "Client", "EnqueueIncomplete", "NodesUnreachable", "TaskManagerError",
           "WaitTimeout"]
