"""The cluster token in SSM Parameter Store, as a SecureString readable only by the cluster's roles.

The token never appears in user-data, tags or logs: instances read it at boot with their role.
"""

from __future__ import annotations

import secrets
from typing import Any

from botocore.exceptions import ClientError


class TokenStore:
    def __init__(self, ssm_client: Any) -> None:
        self.ssm = ssm_client

    def create(self, name: str, tags: list[dict], token: str | None = None) -> str:
        """Store a new token (generated unless given) and return it."""
        token = token or secrets.token_urlsafe(32)
        self.ssm.put_parameter(Name=name, Value=token, Type="SecureString", Tags=tags,
                               Description="scalable task manager cluster token")
        return token

    def _unless_missing(self, method: str, **kwargs: Any) -> dict | None:
        """One SSM call; None when the parameter does not exist, other errors raise."""
        try:
            return getattr(self.ssm, method)(**kwargs)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ParameterNotFound":
                return None
            raise

    def read(self, name: str) -> str | None:
        reply = self._unless_missing("get_parameter", Name=name, WithDecryption=True)
        return reply["Parameter"]["Value"] if reply else None

    def delete(self, name: str) -> bool:
        return self._unless_missing("delete_parameter", Name=name) is not None

    def exists(self, name: str) -> bool:
        return self._unless_missing("get_parameter", Name=name) is not None
