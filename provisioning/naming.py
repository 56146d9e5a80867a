"""Names and tags of one AWS cluster's resources, derived from the cluster name alone.

Everything the AWS mode creates carries the tag ``tm-cluster=<name>`` (IAM resources also sit
under the path ``/tm/<name>/``), so ``--destroy`` and a second run find them without any local
state file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAG_CLUSTER = "tm-cluster"
TAG_ROLE = "tm-role"  # "node" or "worker"
TAG_NODE = "tm-node"  # on workers: the node that launched them
NODE_PORT = 8000

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")


def check_cluster_name(name: str) -> str:
    """Return ``name`` if usable in every resource name (bucket names are the strictest)."""
    if not _NAME.match(name) or name.endswith("-"):
        raise ValueError(f"cluster name {name!r} is not valid: use 1-24 lowercase letters, digits "
                         "and dashes, starting with a letter")
    return name


@dataclass(frozen=True)
class ClusterNames:
    """The resource names of cluster ``cluster`` in ``account`` / ``region``."""

    cluster: str
    account: str
    region: str

    @property
    def iam_path(self) -> str:
        return f"/tm/{self.cluster}/"

    def role(self, kind: str) -> str:
        return f"tm-{self.cluster}-{kind}"

    def policy(self, kind: str) -> str:
        return f"tm-{self.cluster}-{kind}"

    def profile(self, kind: str) -> str:
        return f"tm-{self.cluster}-{kind}"

    def role_arn(self, kind: str) -> str:
        return f"arn:aws:iam::{self.account}:role{self.iam_path}{self.role(kind)}"

    def profile_arn(self, kind: str) -> str:
        return f"arn:aws:iam::{self.account}:instance-profile{self.iam_path}{self.profile(kind)}"

    def security_group(self, kind: str) -> str:
        return f"tm-{self.cluster}-{kind}"

    @property
    def token_parameter(self) -> str:
        return f"/tm/{self.cluster}/cluster-token"

    @property
    def token_parameter_arn(self) -> str:
        return f"arn:aws:ssm:{self.region}:{self.account}:parameter{self.token_parameter}"

    @property
    def bucket(self) -> str:
        """Globally unique: account and region are part of it (at most 63 characters)."""
        return f"tm-{self.cluster}-{self.account}-{self.region}"[:63].rstrip("-")

    def tags(self, **extra: str) -> list[dict[str, str]]:
        tags = {TAG_CLUSTER: self.cluster, **extra}
        return [{"Key": k, "Value": v} for k, v in tags.items()]
