"""EC2 instance helpers shared by provisioning (nodes) and the EC2 launcher (workers).

``run_request`` builds the one RunInstances request both use, so every instance gets the same
safety settings: IMDSv2 required, tags on the instance and its volume at creation, and the
instance profile of its kind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from provisioning.naming import TAG_CLUSTER, TAG_ROLE

log = logging.getLogger(__name__)

#: Amazon Linux 2023, looked up per region and architecture through AWS's public SSM parameter.
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
ALIVE_STATES = ("pending", "running")
NOT_GONE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
#: Instance families with CPU credits (CreditSpecification).
BURSTABLE = frozenset({"t2", "t3", "t3a", "t4g"})


def architecture(ec2: Any, instance_type: str) -> str:
    """``x86_64`` or ``arm64``: what the AMI must be built for."""
    try:
        types = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError as err:
        if err.response["Error"]["Code"] == "InvalidInstanceType":
            raise ValueError(f"instance type {instance_type!r} does not exist in this region") from None
        raise
    archs = types[0]["ProcessorInfo"]["SupportedArchitectures"]
    return "arm64" if "arm64" in archs and "x86_64" not in archs else "x86_64"


def latest_ami(ssm: Any, arch: str) -> str:
    """The current Amazon Linux 2023 AMI of the client's region (no hard-coded id)."""
    return ssm.get_parameter(Name=AMI_PARAMETER.format(arch=arch))["Parameter"]["Value"]


def run_request(
    *,
    ami_id: str,
    instance_type: str,
    subnet_id: str,
    security_group_id: str,
    profile_arn: str,
    user_data: str,
    tags: list[dict],
    count: int = 1,
    terminate_on_shutdown: bool = False,
    key_name: str | None = None,
    spot: bool = False,
    credits: str | None = None,
) -> dict:
    """The keyword arguments of ``run_instances`` for cluster instances.

    ``spot`` asks for one-time spot instances that terminate when EC2 reclaims them (no
    persistent request that would relaunch them outside the scaler's count). ``credits``
    (``standard``) sets the CPU credit mode of a burstable type (t2, t3, t3a, t4g); others ignore it:
    a busy node in standard mode is slowed to its baseline instead of paying for surplus credits."""
    request = {
        "ImageId": ami_id,
        "InstanceType": instance_type,
        "MinCount": 1,  # what can be had: the scaler counts the instances it got
        "MaxCount": count,
        "SubnetId": subnet_id,
        "SecurityGroupIds": [security_group_id],
        "IamInstanceProfile": {"Arn": profile_arn},
        "UserData": user_data,
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "InstanceInitiatedShutdownBehavior": "terminate" if terminate_on_shutdown else "stop",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                              {"ResourceType": "volume", "Tags": tags}],
    }
    if key_name:
        request["KeyName"] = key_name
    if credits and instance_type.split(".")[0] in BURSTABLE:
        request["CreditSpecification"] = {"CpuCredits": credits}
    if spot:
        request["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
        }
    return request


def cluster_instances(ec2: Any, cluster: str, role: str | None = None,
                      states: Iterable[str] = NOT_GONE_STATES, extra_filters: list[dict] | None = None) -> list[dict]:
    """Instances tagged with ``cluster`` (and ``role``), in ``states``."""
    filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
               {"Name": "instance-state-name", "Values": list(states)}]
    if role:
        filters.append({"Name": f"tag:{TAG_ROLE}", "Values": [role]})
    filters += extra_filters or []
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def tag_value(instance: dict, key: str) -> str | None:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), None)
