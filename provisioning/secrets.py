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

    def read(self, name: str) -> str | None:
        try:
            return self.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except ClientError as err:
            if err.response["Error"]["Code"] == "ParameterNotFound":
                return None
            raise

    def delete(self, name: str) -> bool:
        try:
            self.ssm.delete_parameter(Name=name)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ParameterNotFound":
                return False
            raise
        return True

    def exists(self, name: str) -> bool:
        try:
            self.ssm.get_parameter(Name=name)
        except ClientError as err:
            if err.response["Error"]["Code"] == "ParameterNotFound":
                return False
            raise
        return True
