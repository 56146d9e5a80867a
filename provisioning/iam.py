"""IAM wrapper: the cluster's roles, managed policies and instance profiles.

Every resource sits under the path ``/tm/<cluster>/``, which is how ``delete_path`` finds them.
The client is injected (awsdocs style); only ``from_client`` creates one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)


class IamWrapper:
    def __init__(self, iam_client: Any) -> None:
        self.iam = iam_client

    @classmethod
    def from_client(cls, session: Any) -> IamWrapper:
        return cls(session.client("iam"))

    def create_role(self, name: str, path: str, trust: dict, tags: list[dict], boundary: str | None = None) -> str:
        """Create a role that ``trust`` lets assume, capped by the ``boundary`` policy; returns its ARN."""
        extra = {"PermissionsBoundary": boundary} if boundary else {}
        try:
            role = self.iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(trust),
                                        Description="scalable task manager cluster role", Tags=tags, **extra)
        except ClientError as err:
            log.error("could not create role %s: %s", name, err.response["Error"]["Code"])
            raise
        return role["Role"]["Arn"]

    def create_policy(self, name: str, path: str, document: dict, tags: list[dict]) -> str:
        """Create a customer managed policy; returns its ARN."""
        try:
            policy = self.iam.create_policy(PolicyName=name, Path=path, PolicyDocument=json.dumps(document),
                                            Tags=tags)
        except ClientError as err:
            if err.response["Error"]["Code"] == "MalformedPolicyDocument":
                log.error("policy %s was refused as malformed: %s", name, err)
            raise
        return policy["Policy"]["Arn"]

    def attach(self, role: str, policy_arn: str) -> None:
        self.iam.attach_role_policy(RoleName=role, PolicyArn=policy_arn)

    def create_instance_profile(self, name: str, path: str, role: str, tags: list[dict]) -> str:
        """Create an instance profile holding ``role``; returns its ARN."""
        profile = self.iam.create_instance_profile(InstanceProfileName=name, Path=path, Tags=tags)
        self.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role)
        return profile["InstanceProfile"]["Arn"]

    def ensure_spot_service_role(self) -> bool:
        """Make sure the account has EC2 Spot's service-linked role, which RunInstances with spot
        market options needs (it is created on a console launch, not by the API). True if made now."""
        try:
            self.iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")
        except ClientError as err:
            error = err.response["Error"]
            if error["Code"] == "EntityAlreadyExists" or (error["Code"] == "InvalidInput"
                                                          and "taken" in error.get("Message", "")):
                return False  # the account has it already
            raise
        return True

    def roles(self, path: str) -> list[dict]:
        pages = self.iam.get_paginator("list_roles").paginate(PathPrefix=path)
        return [r for page in pages for r in page["Roles"] if r["Path"] == path]

    def policies(self, path: str) -> list[dict]:
        pages = self.iam.get_paginator("list_policies").paginate(Scope="Local", PathPrefix=path)
        return [p for page in pages for p in page["Policies"] if p["Path"] == path]

    def instance_profiles(self, path: str) -> list[dict]:
        pages = self.iam.get_paginator("list_instance_profiles").paginate(PathPrefix=path)
        return [p for page in pages for p in page["InstanceProfiles"] if p["Path"] == path]

    def delete_path(self, path: str) -> list[str]:
        """Delete every instance profile, role and policy under ``path``; returns what went."""
        removed = []
        for profile in self.instance_profiles(path):
            name = profile["InstanceProfileName"]
            for role in profile.get("Roles", []):
                self.iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
            self.iam.delete_instance_profile(InstanceProfileName=name)
            removed.append(f"instance profile {name}")
        for role in self.roles(path):
            name = role["RoleName"]
            for attached in self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                self.iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
            for inline in self.iam.list_role_policies(RoleName=name)["PolicyNames"]:
                self.iam.delete_role_policy(RoleName=name, PolicyName=inline)
            self.iam.delete_role(RoleName=name)
            removed.append(f"role {name}")
        for policy in self.policies(path):
            arn = policy["Arn"]
            for version in self.iam.list_policy_versions(PolicyArn=arn)["Versions"]:
                if not version["IsDefaultVersion"]:
                    self.iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
            self.iam.delete_policy(PolicyArn=arn)
            removed.append(f"policy {policy['PolicyName']}")
        return removed
