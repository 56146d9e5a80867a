"""The IAM policy documents of a cluster, as plain dicts (pure: no AWS call).

Least privilege, statement by statement:

* nodes may run instances only with the cluster's tags, the worker profile, the worker
  instance type, IMDSv2 required, from the worker AMI into the cluster's subnets and worker
  security group (on-demand or as one-time spot requests), with network interfaces only in those
  subnets; may tag only as part of that launch; may terminate only the cluster's workers; may
  describe instances (a read action that cannot be scoped: workers and the peer node are found
  with it); may pass only the worker role, and only to EC2; may read only the cluster's three
  tokens and the node bundle; may use KMS keys only through SSM to decrypt those tokens
  (``kms:ViaService`` and the parameter in the encryption context) and through EC2 for the
  encrypted volumes of the workers they launch (EBS encryption by default with a customer managed
  key; the key's policy must allow it, as the default key policy does).
* workers may read the worker token (decrypting it through SSM) and the worker bundle, nothing else.
* both roles get a permissions boundary (``boundary_policy``, or one the caller names) that caps
  them at those actions on the cluster's resources, whatever is attached to them later.

ARNs are made in the caller's partition (``aws``, ``aws-us-gov``, ``aws-cn``).
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioning.naming import TAG_CLUSTER, TAG_ROLE, TOKEN_VARIABLES, ClusterNames

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
    bundle_key: str  # the node's own bundle (workers read theirs with their own role)


#: What EC2 does with a KMS key for an encrypted volume of an instance it launches for the caller.
EBS_KEY_ACTIONS = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
                   "kms:ReEncryptTo"]


def via(names: ClusterNames, service: str) -> str:
    """The ``kms:ViaService`` value of ``service`` in the cluster's region."""
    suffix = "amazonaws.com.cn" if names.partition == "aws-cn" else "amazonaws.com"
    return f"{service}.{names.region}.{suffix}"


def _read_statements(names: ClusterNames, bundle_key: str, token_kinds: tuple[str, ...]) -> list[dict]:
    tokens = [names.parameter_arn(names.token_parameter_of(kind)) for kind in token_kinds]
    return [
        {"Sid": "ReadClusterTokens", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": tokens},
        # SecureStrings: SSM decrypts with the key on the reader's behalf; only for these parameters
        {"Sid": "DecryptClusterTokensViaSsm", "Effect": "Allow", "Action": "kms:Decrypt",
         "Resource": names.arn("kms", "key/*"),
         "Condition": {"StringEquals": {"kms:ViaService": via(names, "ssm")},
                       "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": tokens}}},
        {"Sid": "FetchBundle", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": names.bucket_arn(bundle_key)},
    ]


def _ebs_statements(names: ClusterNames) -> list[dict]:
    """A node launches workers whose volumes EBS may encrypt by default with a customer managed
    key: EC2 then uses the key on the node's behalf (a grant for the volume, a data key)."""
    key = names.arn("kms", "key/*")
    return [
        {"Sid": "EncryptedWorkerVolumesViaEc2", "Effect": "Allow", "Action": EBS_KEY_ACTIONS, "Resource": key,
         "Condition": {"StringEquals": {"kms:ViaService": via(names, "ec2")}}},
        {"Sid": "VolumeGrantsForEc2", "Effect": "Allow", "Action": "kms:CreateGrant", "Resource": key,
         "Condition": {"StringEquals": {"kms:ViaService": via(names, "ec2")},
                       "Bool": {"kms:GrantIsForAWSResource": "true"}}},
    ]


def worker_policy(names: ClusterNames, bundle_key: str) -> dict:
    """A worker reads the worker token and its bundle: not the peer's or the operator's token."""
    return {"Version": VERSION, "Statement": _read_statements(names, bundle_key, ("worker",))}


def boundary_policy(names: ClusterNames) -> dict:
    """The permissions boundary of both roles: the actions they use, on the cluster's resources
    where the action allows it (RunInstances and DescribeInstances touch images, subnets, ...)."""
    ec2 = names.arn("ec2", "")
    return {"Version": VERSION, "Statement": [
        {"Sid": "ClusterEc2", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"],
         "Resource": [f"{ec2}*", names.arn("ec2", "image/*", account=False)]},
        {"Sid": "Describe", "Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
        {"Sid": "PassClusterRoles", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": names.arn("iam", f"role{names.iam_path}*", region=False)},
        {"Sid": "ClusterTokens", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": names.parameter_arn(f"/tm/{names.cluster}/*")},
        {"Sid": "ClusterBucket", "Effect": "Allow", "Action": "s3:GetObject", "Resource": names.bucket_arn("*")},
        {"Sid": "KeysViaSsmAndEc2", "Effect": "Allow", "Action": ["kms:CreateGrant", *EBS_KEY_ACTIONS],
         "Resource": names.arn("kms", "key/*"),
         "Condition": {"StringEquals": {"kms:ViaService": [via(names, "ssm"), via(names, "ec2")]}}},
    ]}


def node_policy(names: ClusterNames, scope: WorkerLaunchScope) -> dict:
    ec2 = names.arn("ec2", "")[:-1]  # arn:<partition>:ec2:<region>:<account>
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
             names.arn("ec2", f"image/{scope.ami_id}", account=False),
             *(f"{ec2}:subnet/{subnet}" for subnet in scope.subnet_ids),
             f"{ec2}:security-group/{scope.security_group_id}",
         ]},
        {"Sid": "RunWithInterfacesInClusterSubnets", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": f"{ec2}:network-interface/*",
         "Condition": {"ArnEquals": {"ec2:Subnet": [f"{ec2}:subnet/{subnet}" for subnet in scope.subnet_ids]}}},
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
        *_read_statements(names, scope.bundle_key, tuple(TOKEN_VARIABLES)),
        *_ebs_statements(names),
    ]
    return {"Version": VERSION, "Statement": statements}


#: What the person running ``run_program.py`` needs (create, report, --destroy), as IAM actions.
#: tests/test_aws_cluster.py checks that every AWS call of the whole flow is covered by this list.
CALLER_ACTIONS = (
    "sts:GetCallerIdentity",
    "ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeInstanceTypes", "ec2:DescribeInstances",
    "ec2:DescribeInstanceTypeOfferings", "ec2:GetEbsEncryptionByDefault", "ec2:GetEbsDefaultKmsKeyId",
    "servicequotas:GetServiceQuota",
    "ec2:DescribeSecurityGroups", "ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
    "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:CreateTags", "ec2:RunInstances",
    "ec2:TerminateInstances",
    "ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource", "ssm:DeleteParameter",
    "s3:CreateBucket", "s3:PutBucketPublicAccessBlock", "s3:PutBucketTagging", "s3:PutBucketPolicy", "s3:PutObject",
    "s3:ListBucket",
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
    # a bundle above 8 MB goes up in parts: each part is authorised as s3:PutObject
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
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
