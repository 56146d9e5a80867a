"""Checks before AWS mode creates anything (read-only calls): what would make a cluster fail later.

* the node and worker instance types exist in the region (an unknown one is named as such) and
  are offered in the default subnets' zones (nodes and workers go only into zones that offer
  their type);
* those subnets give instances public IPv4 addresses (the nodes' API is reached by them);
* the account's vCPU quotas (Service Quotas) leave room, beside the vCPUs its running instances
  already use, for 2 nodes + 2 x MAX_NUM_OF_WORKERS workers: on-demand standard instances
  (L-1216C47A) for nodes and workers, or with ``--spot`` the spot quota (L-34B43A08) for the
  workers; when a quota cannot be read, a warning says how many vCPUs the cluster can use;
* EBS encryption by default with a customer managed KMS key is a warning: the node role has the
  grants EC2 needs through ``kms:ViaService``, which that key's policy must allow (the default key
  policy does); an unreadable key is a warning too.

The user-data scripts are rendered and checked before this (``provisioning/cluster.py``).

``run`` raises ``PreflightFailed`` listing every problem; warnings are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

#: Service Quotas code of "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances" (vCPUs).
STANDARD_VCPU_QUOTA = "L-1216C47A"
#: ... and of "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests" (vCPUs).
SPOT_VCPU_QUOTA = "L-34B43A08"
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


def vcpus(ec2: Any, instance_type: str) -> int | None:
    """The vCPUs of ``instance_type``; None if the region does not know the type."""
    try:
        (info,) = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError as err:
        if err.response["Error"]["Code"] in ("InvalidInstanceType", "InvalidParameterValue"):
            return None
        raise
    return int(info["VCpuInfo"]["DefaultVCpus"])


def vcpus_in_use(ec2: Any) -> dict[str, int]:
    """vCPUs of the account's pending and running standard-family instances in this region, as
    ``{"on-demand": n, "spot": m}``: they count against the same quotas as the cluster."""
    used = {"on-demand": 0, "spot": 0}
    sizes: dict[str, int | None] = {}
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                kind = instance["InstanceType"]
                if not _standard(kind):
                    continue
                cpu = instance.get("CpuOptions") or {}
                if cpu.get("CoreCount") and cpu.get("ThreadsPerCore"):
                    count = cpu["CoreCount"] * cpu["ThreadsPerCore"]
                else:
                    count = sizes[kind] if kind in sizes else sizes.setdefault(kind, vcpus(ec2, kind))
                used["spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand"] += count or 0
    return used


def _standard(instance_type: str) -> bool:
    return instance_type[:1].lower() in STANDARD_FAMILIES


def run(ec2: Any, quotas: Any, subnets: Sequence[dict], *, node_type: str, worker_type: str,
        max_workers: int, spot: bool = False) -> Preflight:
    """The checks, over the default subnets (DescribeSubnets answers); raises PreflightFailed."""
    problems: list[str] = []
    warnings: list[str] = []
    sizes = {role: vcpus(ec2, kind) for role, kind in (("node", node_type), ("worker", worker_type))}
    unknown = [f"{kind} ({role}s)" for role, kind in (("node", node_type), ("worker", worker_type))
               if sizes[role] is None]
    if unknown:  # nothing else can be checked for a type that does not exist
        region = ec2.meta.region_name
        raise PreflightFailed([f"instance type {name} does not exist in {region}: check the spelling "
                               "(e.g. t3.micro, c7a.large) or `aws ec2 describe-instance-type-offerings`"
                               for name in unknown])
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
    nodes, workers = 2 * sizes["node"], 2 * max_workers * sizes["worker"]
    needed = {"on-demand": nodes + (0 if spot else workers), "spot": workers if spot else 0}
    in_use = vcpus_in_use(ec2)
    if _standard(node_type) and _standard(worker_type):
        what = {"on-demand": "2 nodes" + ("" if spot else f" + 2 x {max_workers} workers"),
                "spot": f"2 x {max_workers} spot workers"}
        for market, code in (("on-demand", STANDARD_VCPU_QUOTA), ("spot", SPOT_VCPU_QUOTA)):
            if needed[market]:
                problem, warning = _quota(quotas, market, code, needed[market], in_use[market], what[market])
                problems += problem
                warnings += warning
    else:
        warnings.append(f"the cluster can use {nodes + workers} vCPUs{' (workers: spot)' if spot else ''}; "
                        "check the vCPU quotas of its instance families")
    warnings += _ebs_key(ec2)
    if problems:
        raise PreflightFailed(problems)
    return Preflight(chosen["node"], chosen["worker"], warnings)


def _quota(quotas: Any, market: str, code: str, needed: int, used: int, what: str) -> tuple[list[str], list[str]]:
    name = {"on-demand": "Running On-Demand Standard instances",
            "spot": "All Standard Spot Instance Requests"}[market]
    try:
        value = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
    except (ClientError, BotoCoreError, AttributeError) as err:
        return [], [f"could not read the {market} vCPU quota ({_code(err)}): make sure '{name}' ({code}) allows "
                    f"{needed} vCPUs ({what}) beside the {used} its running instances use"]
    if value - used < needed:
        return [f"the account's vCPU quota for {market} standard instances is {value:g}, its running instances use "
                f"{used}, the cluster can use {needed} more ({what}): lower --max-workers, stop other instances "
                f"or ask for more in Service Quotas ({code})"], []
    return [], []


def _ebs_key(ec2: Any) -> list[str]:
    """Warnings about EBS encryption by default (the node role launches workers with encrypted volumes)."""
    try:
        if not ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"]:
            return []
        key = ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
    except (ClientError, BotoCoreError) as err:
        return [f"EBS encryption by default is on and its key could not be read ({_code(err)}): if it is a customer "
                "managed KMS key, its key policy must let the account's IAM policies grant its use (the default "
                "key policy does)"]
    if key == AWS_MANAGED_EBS_KEY or key.endswith(f":{AWS_MANAGED_EBS_KEY}"):
        return []
    return [f"new EBS volumes are encrypted by default with the customer managed KMS key {key}: the node role may "
            "use it through EC2 only (kms:CreateGrant, kms:GenerateDataKeyWithoutPlaintext, kms:Decrypt with "
            "kms:ViaService), which works only if that key's policy lets the account's IAM policies grant its "
            "use (the default key policy does); otherwise every worker launch fails"]


def _code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code", "error")
    return type(err).__name__
