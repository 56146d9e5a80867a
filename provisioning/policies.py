"""The IAM policy documents of a cluster, as plain dicts (pure: no AWS call).

Least privilege, statement by statement:

* nodes may run instances only with the cluster's tags, the worker profile, the worker
  instance type, IMDSv2 required, from the worker AMI into the cluster's subnets and worker
  security group (on-demand or as one-time spot requests); may tag only as part of that launch; may terminate only the cluster's
  workers; may describe instances (a read action that cannot be scoped); may pass only the
  worker role, and only to EC2; may read only the cluster's token and wheel.
* workers may read the cluster's token and wheel, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioning.naming import TAG_CLUSTER, TAG_ROLE, ClusterNames

VERSION = "2012-10-17"


def trust_policy() -> dict:
    """Only EC2 may assume the cluster's roles."""
    return {"Version": VERSION, "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }]}


@dataclass(frozen=True)
class WorkerLaunchScope:
    """What a node's worker launches are allowed to use."""

    ami_id: str
    instance_type: str
    subnet_ids: tuple[str, ...]
    security_group_id: str
    wheel_key: str


def _read_statements(names: ClusterNames, wheel_key: str) -> list[dict]:
    return [
        {"Sid": "ReadClusterToken", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": names.token_parameter_arn},
        {"Sid": "FetchWheel", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{names.bucket}/{wheel_key}"},
    ]


def worker_policy(names: ClusterNames, wheel_key: str) -> dict:
    return {"Version": VERSION, "Statement": _read_statements(names, wheel_key)}


def node_policy(names: ClusterNames, scope: WorkerLaunchScope) -> dict:
    ec2 = f"arn:aws:ec2:{names.region}:{names.account}"
    cluster_tag = f"aws:RequestTag/{TAG_CLUSTER}"
    statements = [
        {"Sid": "RunOnlyTaggedImdsv2Workers", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": f"{ec2}:instance/*",
         "Condition": {
             "StringEquals": {
                 cluster_tag: names.cluster,
                 f"aws:RequestTag/{TAG_ROLE}": "worker",
                 "ec2:MetadataHttpTokens": "required",
                 "ec2:InstanceType": scope.instance_type,
             },
             "ArnEquals": {"ec2:InstanceProfile": names.profile_arn("worker")},
         }},
        {"Sid": "RunWithClusterResources", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [
             f"arn:aws:ec2:{names.region}::image/{scope.ami_id}",
             *(f"{ec2}:subnet/{subnet}" for subnet in scope.subnet_ids),
             f"{ec2}:security-group/{scope.security_group_id}",
             f"{ec2}:network-interface/*",
         ]},
        {"Sid": "RunAsSpot", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": f"{ec2}:spot-instances-request/*"},  # the request a spot launch (--spot) makes
        {"Sid": "RunWithTaggedVolumes", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": f"{ec2}:volume/*",
         "Condition": {"StringEquals": {cluster_tag: names.cluster}}},
        {"Sid": "TagOnlyAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances", cluster_tag: names.cluster}}},
        {"Sid": "TerminateOnlyClusterWorkers", "Effect": "Allow", "Action": "ec2:TerminateInstances",
         "Resource": f"{ec2}:instance/*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/{TAG_CLUSTER}": names.cluster,
                                        f"aws:ResourceTag/{TAG_ROLE}": "worker"}}},
        {"Sid": "DescribeInstances", "Effect": "Allow", "Action": "ec2:DescribeInstances",
         "Resource": "*"},  # Describe* actions support no resource-level scoping
        {"Sid": "PassOnlyWorkerRoleToEc2", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": names.role_arn("worker"),
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        *_read_statements(names, scope.wheel_key),
    ]
    return {"Version": VERSION, "Statement": statements}


#: What the person running ``run_program.py`` needs (create, report, --destroy), as IAM actions.
#: tests/test_aws_cluster.py checks that every AWS call of the whole flow is covered by this list.
CALLER_ACTIONS = (
    "sts:GetCallerIdentity",
    "ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeInstanceTypes", "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups", "ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
    "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:CreateTags", "ec2:RunInstances",
    "ec2:TerminateInstances",
    "ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource", "ssm:DeleteParameter",
    "s3:CreateBucket", "s3:PutBucketPublicAccessBlock", "s3:PutBucketTagging", "s3:PutObject", "s3:ListBucket",
    "s3:ListBucketVersions", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:DeleteBucket",
    "iam:CreateRole", "iam:TagRole", "iam:CreatePolicy", "iam:TagPolicy", "iam:AttachRolePolicy",
    "iam:CreateInstanceProfile", "iam:TagInstanceProfile", "iam:AddRoleToInstanceProfile", "iam:PassRole",
    "iam:ListRoles", "iam:ListPolicies", "iam:ListInstanceProfiles", "iam:ListAttachedRolePolicies",
    "iam:ListRolePolicies", "iam:DetachRolePolicy", "iam:DeleteRolePolicy", "iam:DeleteRole",
    "iam:ListPolicyVersions", "iam:DeletePolicyVersion", "iam:DeletePolicy",
    "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile",
    "iam:CreateServiceLinkedRole",  # --spot only: EC2 Spot's role, once per account
)

#: API operations whose IAM action has another name.
OPERATION_ACTIONS = {
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:ListObjectVersions": ("s3:ListBucketVersions",),
    "s3:DeleteObjects": ("s3:DeleteObject", "s3:DeleteObjectVersion"),
    "s3:PutPublicAccessBlock": ("s3:PutBucketPublicAccessBlock",),
    "ec2:RunInstances": ("ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"),
    "ec2:CreateSecurityGroup": ("ec2:CreateSecurityGroup", "ec2:CreateTags"),
    "ssm:PutParameter": ("ssm:PutParameter", "ssm:AddTagsToResource"),
    "iam:CreateRole": ("iam:CreateRole", "iam:TagRole"),
    "iam:CreatePolicy": ("iam:CreatePolicy", "iam:TagPolicy"),
    "iam:CreateInstanceProfile": ("iam:CreateInstanceProfile", "iam:TagInstanceProfile"),
}


def actions_for(service: str, operation: str) -> tuple[str, ...]:
    """The IAM actions an API call needs (``ec2``, ``RunInstances`` -> ec2:RunInstances, ...)."""
    name = f"{service}:{operation}"
    return OPERATION_ACTIONS.get(name, (name,))
