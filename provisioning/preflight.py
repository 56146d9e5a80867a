"""Checks before AWS mode creates anything (read-only calls): what would make a cluster fail later.

* the node and worker instance types are offered in the default subnets' zones (nodes and workers
  go only into zones that offer their type);
* those subnets give instances public IPv4 addresses (the nodes' API is reached by them);
* the account's vCPU quota for on-demand standard instances (Service Quotas, L-1216C47A) covers 2
  nodes + 2 x MAX_NUM_OF_WORKERS workers; when the quota cannot be read, a warning says how many
  vCPUs the cluster can use;
* EBS encryption by default with a customer managed KMS key, which the node role cannot use
  (its worker launches would fail), is refused; an unreadable key is a warning.

``run`` raises ``PreflightFailed`` listing every problem; warnings are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

#: Service Quotas code of "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances" (vCPUs).
STANDARD_VCPU_QUOTA = "L-1216C47A"
STANDARD_FAMILIES = frozenset("acdhimrtz")
AWS_MANAGED_EBS_KEY = "alias/aws/ebs"


class PreflightFailed(RuntimeError):
    """What would make the cluster fail, found before anything was created."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class Preflight:
    """The subnets nodes and workers may use (default subnets, by zone), and the warnings."""

    node_subnets: list[str]
    worker_subnets: list[str]
    warnings: list[str] = field(default_factory=list)


def offered_zones(ec2: Any, instance_type: str) -> set[str]:
    pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}])
    return {o["Location"] for page in pages for o in page["InstanceTypeOfferings"]}


def vcpus(ec2: Any, instance_type: str) -> int:
    (info,) = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    return int(info["VCpuInfo"]["DefaultVCpus"])


def _standard(instance_type: str) -> bool:
    return instance_type[:1].lower() in STANDARD_FAMILIES


def run(ec2: Any, quotas: Any, subnets: Sequence[dict], *, node_type: str, worker_type: str,
        max_workers: int) -> Preflight:
    """The checks, over the default subnets (DescribeSubnets answers); raises PreflightFailed."""
    problems: list[str] = []
    warnings: list[str] = []
    no_ip = [s["SubnetId"] for s in subnets if not s.get("MapPublicIpOnLaunch")]
    if no_ip:
        problems.append(f"the default subnets {', '.join(no_ip)} do not give instances a public IPv4 address "
                        "(MapPublicIpOnLaunch); turn it on (aws ec2 modify-subnet-attribute --map-public-ip-on-launch)"
                        " or pick another region")
    chosen = {}
    for role, instance_type in (("node", node_type), ("worker", worker_type)):
        zones = offered_zones(ec2, instance_type)
        chosen[role] = [s["SubnetId"] for s in subnets if s["AvailabilityZone"] in zones and s["SubnetId"] not in no_ip]
        if not chosen[role]:
            problems.append(f"{instance_type} ({role}s) is not offered in any zone of the default subnets "
                            f"({', '.join(sorted(s['AvailabilityZone'] for s in subnets))}); pick another type or region")
    needed = 2 * vcpus(ec2, node_type) + 2 * max_workers * vcpus(ec2, worker_type)
    if _standard(node_type) and _standard(worker_type):
        problem, warning = _quota(quotas, needed, max_workers)
        problems += problem
        warnings += warning
    else:
        warnings.append(f"the cluster can use {needed} vCPUs; check the vCPU quotas of its instance families")
    problems += _ebs_key(ec2, warnings)
    if problems:
        raise PreflightFailed(problems)
    return Preflight(chosen["node"], chosen["worker"], warnings)


def _quota(quotas: Any, needed: int, max_workers: int) -> tuple[list[str], list[str]]:
    try:
        value = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=STANDARD_VCPU_QUOTA)["Quota"]["Value"]
    except (ClientError, BotoCoreError, AttributeError) as err:
        return [], [f"could not read the vCPU quota ({_code(err)}): make sure 'Running On-Demand Standard "
                    f"instances' allows {needed} vCPUs (2 nodes + 2 x {max_workers} workers)"]
    if value < needed:
        return [f"the account's vCPU quota for on-demand standard instances is {value:g}, the cluster can use "
                f"{needed} (2 nodes + 2 x {max_workers} workers): lower --max-workers or ask for more in "
                "Service Quotas (L-1216C47A)"], []
    return [], []


def _ebs_key(ec2: Any, warnings: list[str]) -> list[str]:
    try:
        if not ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"]:
            return []
        key = ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
    except (ClientError, BotoCoreError) as err:
        warnings.append(f"EBS encryption by default is on and its key could not be read ({_code(err)}): if it is a "
                        "customer managed KMS key, the node role cannot launch workers with it")
        return []
    if key == AWS_MANAGED_EBS_KEY or key.endswith(f":{AWS_MANAGED_EBS_KEY}"):
        return []
    return [f"new EBS volumes are encrypted by default with the KMS key {key}, which the cluster's node role may not "
            "use: its worker launches would fail. Use the AWS managed key (aws ec2 reset-ebs-default-kms-key-id) or "
            "grant the role kms:CreateGrant, kms:GenerateDataKeyWithoutPlaintext and kms:Decrypt on that key"]


def _code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code", "error")
    return type(err).__name__
