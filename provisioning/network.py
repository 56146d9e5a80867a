"""EC2 networking wrapper: the default VPC and subnets, and the cluster's two security groups.

The node group opens the node port only to the client CIDR, to the worker group and to itself
(the peer node); SSH only when asked. The worker group has no inbound rule at all.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from provisioning.naming import TAG_CLUSTER

log = logging.getLogger(__name__)


class NoDefaultVpc(RuntimeError):
    """The region has no default VPC (the AWS mode places everything in it)."""


class NetworkWrapper:
    def __init__(self, ec2_client: Any) -> None:
        self.ec2 = ec2_client

    def default_vpc(self) -> str:
        vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise NoDefaultVpc("this region has no default VPC; create one with "
                               "'aws ec2 create-default-vpc' or pick another region")
        return vpcs[0]["VpcId"]

    def default_subnet_records(self, vpc_id: str) -> list[dict]:
        """The VPC's default subnets, one per availability zone, by zone (DescribeSubnets answers)."""
        subnets = self.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                     {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        if not subnets:
            raise NoDefaultVpc(f"the default VPC {vpc_id} has no default subnet")
        return sorted(subnets, key=lambda s: s["AvailabilityZone"])

    def default_subnets(self, vpc_id: str) -> list[str]:
        return [s["SubnetId"] for s in self.default_subnet_records(vpc_id)]

    def create_group(self, name: str, description: str, vpc_id: str, tags: list[dict]) -> str:
        try:
            group = self.ec2.create_security_group(
                GroupName=name, Description=description, VpcId=vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])
        except ClientError as err:
            if err.response["Error"]["Code"] == "InvalidGroup.Duplicate":
                log.error("security group %s already exists: run --destroy first", name)
            raise
        return group["GroupId"]

    def open_node_port(self, node_group: str, worker_group: str, port: int, client_cidr: str,
                       ssh_cidr: str | None = None) -> None:
        """Node port from the clients' CIDR, the workers and the peer node; SSH only if asked."""
        permissions = [{
            "IpProtocol": "tcp", "FromPort": port, "ToPort": port,
            "IpRanges": [{"CidrIp": client_cidr, "Description": "clients"}],
            "UserIdGroupPairs": [{"GroupId": worker_group, "Description": "workers"},
                                 {"GroupId": node_group, "Description": "peer node"}],
        }]
        if ssh_cidr:
            permissions.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                "IpRanges": [{"CidrIp": ssh_cidr, "Description": "ssh"}]})
        self.ec2.authorize_security_group_ingress(GroupId=node_group, IpPermissions=permissions)

    def cluster_groups(self, cluster: str) -> list[dict]:
        return self.ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}])["SecurityGroups"]

    def delete_cluster_groups(self, cluster: str) -> list[str]:
        """Drop the rules that reference groups first (they block deletion), then the groups."""
        groups = self.cluster_groups(cluster)
        for group in groups:
            if group.get("IpPermissions"):
                self.ec2.revoke_security_group_ingress(GroupId=group["GroupId"],
                                                       IpPermissions=group["IpPermissions"])
        removed = []
        for group in groups:
            self.ec2.delete_security_group(GroupId=group["GroupId"])
            removed.append(f"security group {group['GroupName']} ({group['GroupId']})")
        return removed
