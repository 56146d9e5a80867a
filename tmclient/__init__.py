"""A client for the task manager: ``Client`` for Python code, ``tm`` for the terminal."""

from tmclient.client import ApiError, Client, EnqueueIncomplete, NodesUnreachable, TaskManagerError, WaitTimeout

__all__ = ["ApiError", "Client", "EnqueueIncomplete", "NodesUnreachable", "TaskManagerError", "WaitTimeout"]
