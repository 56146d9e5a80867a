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


#: The secrets of a cluster, each in its own SSM parameter (docs/aws.md, "Tokens"): workers hold
#: only the worker token (CLUSTER_TOKEN); the nodes also hold the peer and operator tokens and the
#: first client key (API_KEY, for clients when API_KEYS=required).
TOKEN_VARIABLES = {"worker": "CLUSTER_TOKEN", "peer": "PEER_TOKEN", "operator": "OPERATOR_TOKEN", "client": "API_KEY"}


def partition_of(arn: str) -> str:
    """``aws``, ``aws-us-gov`` or ``aws-cn``: the partition of an ARN (the caller's, say)."""
    parts = arn.split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "arn" and parts[1] else "aws"


@dataclass(frozen=True)
class ClusterNames:
    """The resource names of cluster ``cluster`` in ``account`` / ``region`` (ARNs in ``partition``)."""

    cluster: str
    account: str
    region: str
    partition: str = "aws"

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return (f"arn:{self.partition}:{service}:{self.region if region else ''}:"
                f"{self.account if account else ''}:{resource}")

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
        return self.arn("iam", f"role{self.iam_path}{self.role(kind)}", region=False)

    def profile_arn(self, kind: str) -> str:
        return self.arn("iam", f"instance-profile{self.iam_path}{self.profile(kind)}", region=False)

    @property
    def boundary(self) -> str:
        """The permissions boundary policy of the cluster's roles."""
        return f"tm-{self.cluster}-boundary"

    @property
    def boundary_arn(self) -> str:
        return self.arn("iam", f"policy{self.iam_path}{self.boundary}", region=False)

    def security_group(self, kind: str) -> str:
        return f"tm-{self.cluster}-{kind}"

    @property
    def token_parameter(self) -> str:
        """The worker token (CLUSTER_TOKEN), the only one workers can read."""
        return self.token_parameter_of("worker")

    def token_parameter_of(self, kind: str) -> str:
        """The SSM parameter of the ``worker``, ``peer`` or ``operator`` token, or the ``client`` key."""
        if kind not in TOKEN_VARIABLES:
            raise ValueError(f"no token kind {kind!r}")
        if kind == "client":
            return f"/tm/{self.cluster}/client-key"
        return f"/tm/{self.cluster}/cluster-token" if kind == "worker" else f"/tm/{self.cluster}/{kind}-token"

    def parameter_arn(self, name: str) -> str:
        return self.arn("ssm", f"parameter{name}")

    @property
    def token_parameter_arn(self) -> str:
        return self.parameter_arn(self.token_parameter)

    def bucket_arn(self, key: str = "") -> str:
        return self.arn("s3", self.bucket + (f"/{key}" if key else ""), region=False, account=False)

    @property
    def bucket(self) -> str:
        """Globally unique: account and region are part of it (at most 63 characters)."""
        return f"tm-{self.cluster}-{self.account}-{self.region}"[:63].rstrip("-")

    def tags(self, **extra: str) -> list[dict[str, str]]:
        tags = {TAG_CLUSTER: self.cluster, **extra}
        return [{"Key": k, "Value": v} for k, v in tags.items()]
