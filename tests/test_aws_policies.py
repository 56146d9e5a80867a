"""The IAM documents checked against the least-privilege rules (moto does not enforce IAM)."""

from __future__ import annotations

import json

import pytest

from provisioning import policies
from provisioning.naming import ClusterNames, partition_of

NAMES = ClusterNames("demo", "123456789012", "eu-west-1")
SCOPE = policies.WorkerLaunchScope("ami-0123456789abcdef0", "t3.small", ("subnet-aaa", "subnet-bbb"),
                                   "sg-0worker", "bundles/node-x86_64-0123456789abcdef.tar")
WORKER_BUNDLE = "bundles/worker-arm64-fedcba9876543210.tar"
WRITE_ACTIONS = {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "iam:PassRole"}
#: The only actions a node's policy may grant, and a worker's.
KMS_ACTIONS = {"kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
               "kms:ReEncryptTo", "kms:CreateGrant"}
NODE_ACTIONS = WRITE_ACTIONS | KMS_ACTIONS | {"ec2:DescribeInstances", "ssm:GetParameter", "s3:GetObject"}
WORKER_ACTIONS = {"ssm:GetParameter", "s3:GetObject", "kms:Decrypt"}


def statements(document: dict) -> list[dict]:
    return document["Statement"]


def actions(statement: dict) -> list[str]:
    value = statement["Action"]
    return [value] if isinstance(value, str) else value


def resources(statement: dict) -> list[str]:
    value = statement["Resource"]
    return [value] if isinstance(value, str) else value


def by_action(document: dict, action: str) -> list[dict]:
    return [s for s in statements(document) if action in actions(s)]


@pytest.fixture(params=["node", "worker", "boundary"])
def document(request) -> dict:
    if request.param == "node":
        return policies.node_policy(NAMES, SCOPE)
    if request.param == "boundary":
        return policies.boundary_policy(NAMES)
    return policies.worker_policy(NAMES, WORKER_BUNDLE)


def test_no_wildcard_action_and_only_allow(document):
    for statement in statements(document):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        for action in actions(statement):
            assert "*" not in action, action


def test_resource_star_only_on_describe(document):
    for statement in statements(document):
        if "*" in resources(statement):
            assert actions(statement) == ["ec2:DescribeInstances"]


def test_node_policy_grants_only_what_a_node_does():
    document = policies.node_policy(NAMES, SCOPE)
    granted = {a for s in statements(document) for a in actions(s)}
    assert granted == NODE_ACTIONS


def test_worker_policy_is_reading_the_worker_token_and_its_bundle_only():
    document = policies.worker_policy(NAMES, WORKER_BUNDLE)
    granted = {a: resources(s) for s in statements(document) for a in actions(s)}
    assert granted == {  # not the peer's nor the operator's token
        "ssm:GetParameter": ["arn:aws:ssm:eu-west-1:123456789012:parameter/tm/demo/cluster-token"],
        "kms:Decrypt": ["arn:aws:kms:eu-west-1:123456789012:key/*"],
        "s3:GetObject": [f"arn:aws:s3:::{NAMES.bucket}/{WORKER_BUNDLE}"],
    }
    (decrypt,) = by_action(document, "kms:Decrypt")  # only through SSM, only for the worker token
    assert decrypt["Condition"] == {
        "StringEquals": {"kms:ViaService": "ssm.eu-west-1.amazonaws.com"},
        "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": [
            "arn:aws:ssm:eu-west-1:123456789012:parameter/tm/demo/cluster-token"]}}


def test_every_kms_permission_is_scoped_to_ssm_or_ec2_in_the_region(document):
    """kms:Decrypt for the SecureString tokens (both roles) and the EBS grants of encrypted
    worker volumes (nodes) only when SSM or EC2 use the key for the role."""
    kms = [s for s in statements(document) if any(a.startswith("kms:") for a in actions(s))]
    assert kms
    for statement in kms:
        assert resources(statement) == ["arn:aws:kms:eu-west-1:123456789012:key/*"]
        services = statement["Condition"]["StringEquals"]["kms:ViaService"]
        services = [services] if isinstance(services, str) else services
        assert set(services) <= {"ssm.eu-west-1.amazonaws.com", "ec2.eu-west-1.amazonaws.com"}
    node = policies.node_policy(NAMES, SCOPE)
    (grant,) = by_action(node, "kms:CreateGrant")
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert grant["Condition"]["StringEquals"] == {"kms:ViaService": "ec2.eu-west-1.amazonaws.com"}


def test_the_boundary_caps_both_roles_at_the_cluster():
    document = policies.boundary_policy(NAMES)
    granted = {a for s in statements(document) for a in actions(s)}
    assert granted == NODE_ACTIONS  # the node's actions, of which the worker's are a part
    by = {a: resources(s) for s in statements(document) for a in actions(s)}
    assert by["ssm:GetParameter"] == ["arn:aws:ssm:eu-west-1:123456789012:parameter/tm/demo/*"]
    assert by["s3:GetObject"] == [f"arn:aws:s3:::{NAMES.bucket}/*"]
    assert by["iam:PassRole"] == ["arn:aws:iam::123456789012:role/tm/demo/*"]


def test_arns_follow_the_callers_partition():
    gov = ClusterNames("demo", "123456789012", "us-gov-west-1", partition_of(
        "arn:aws-us-gov:iam::123456789012:user/ops"))
    for document in (policies.node_policy(gov, SCOPE), policies.worker_policy(gov, WORKER_BUNDLE),
                     policies.boundary_policy(gov)):
        arns = [r for s in statements(document) for r in resources(s) if r != "*"]
        assert arns and all(r.startswith("arn:aws-us-gov:") for r in arns), arns
    china = ClusterNames("demo", "123456789012", "cn-north-1", "aws-cn")
    assert policies.via(china, "ssm") == "ssm.cn-north-1.amazonaws.com.cn"
    assert gov.profile_arn("worker").startswith("arn:aws-us-gov:iam::123456789012:instance-profile/tm/demo/")
    assert partition_of("arn:aws-cn:sts::1:assumed-role/x") == "aws-cn" and partition_of("") == "aws"


def test_run_instances_requires_cluster_tags_imdsv2_profile_and_type():
    document = policies.node_policy(NAMES, SCOPE)
    run = by_action(document, "ec2:RunInstances")
    on_instance = [s for s in run if any(":instance/" in r for r in resources(s))]
    assert len(on_instance) == 1
    condition = on_instance[0]["Condition"]
    assert condition["StringEquals"]["aws:RequestTag/tm-cluster"] == "demo"
    assert condition["StringEquals"]["aws:RequestTag/tm-role"] == "worker"
    assert condition["StringEquals"]["ec2:MetadataHttpTokens"] == "required"
    assert condition["StringEquals"]["ec2:InstanceType"] == "t3.small"
    assert condition["ArnEquals"]["ec2:InstanceProfile"] == NAMES.profile_arn("worker")
    # the other resources of the launch are the cluster's own, or created by it with its tag
    others = [r for s in run if s is not on_instance[0] for r in resources(s)]
    assert "arn:aws:ec2:eu-west-1::image/ami-0123456789abcdef0" in others
    assert "arn:aws:ec2:eu-west-1:123456789012:security-group/sg-0worker" in others
    assert {r for r in others if ":subnet/" in r} == {
        "arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-aaa", "arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-bbb"}
    volume = [s for s in run if any(":volume/" in r for r in resources(s))]
    assert volume[0]["Condition"]["StringEquals"]["aws:RequestTag/tm-cluster"] == "demo"
    assert all(r.startswith("arn:aws:ec2:eu-west-1:") for r in others)
    # the launch's network interface can only be made in the cluster's subnets
    (interface,) = [s for s in run if any(":network-interface/" in r for r in resources(s))]
    assert interface["Condition"]["ArnEquals"]["ec2:Subnet"] == [
        "arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-aaa", "arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-bbb"]


def test_tags_only_at_creation_and_terminate_only_cluster_workers():
    document = policies.node_policy(NAMES, SCOPE)
    (tag,) = by_action(document, "ec2:CreateTags")
    assert tag["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances"
    (terminate,) = by_action(document, "ec2:TerminateInstances")
    assert terminate["Condition"]["StringEquals"] == {"aws:ResourceTag/tm-cluster": "demo",
                                                      "aws:ResourceTag/tm-role": "worker"}


def test_pass_only_the_worker_role_to_ec2_and_read_only_own_secret():
    document = policies.node_policy(NAMES, SCOPE)
    (pass_role,) = by_action(document, "iam:PassRole")
    assert resources(pass_role) == ["arn:aws:iam::123456789012:role/tm/demo/tm-demo-worker"]
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
    (secrets,) = by_action(document, "ssm:GetParameter")
    assert resources(secrets) == [NAMES.token_parameter_arn, *(
        f"arn:aws:ssm:eu-west-1:123456789012:parameter/tm/demo/{kind}-token" for kind in ("peer", "operator")),
        "arn:aws:ssm:eu-west-1:123456789012:parameter/tm/demo/client-key"]
    (bundle,) = by_action(document, "s3:GetObject")
    assert resources(bundle) == [f"arn:aws:s3:::{NAMES.bucket}/{SCOPE.bundle_key}"]


def test_trust_policy_is_ec2_only():
    (statement,) = policies.trust_policy()["Statement"]
    assert statement == {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                         "Action": "sts:AssumeRole"}


def test_parliament_finds_nothing_but_known_shapes(document):
    """parliament lints the documents. Two findings are expected and understood:

    * RESOURCE_MISMATCH on ec2:RunInstances: each RunInstances statement scopes one kind of
      resource (instance, image, subnet...), the pattern AWS documents for conditions per kind.
    * With community auditors, PRIVILEGE_ESCALATION / PERMISSIONS_MANAGEMENT_ACTIONS for
      iam:PassRole + ec2:RunInstances: a node must start workers with the worker role, which is
      limited to that one role, passed to EC2 only, and can read nothing but the token and wheel.
    """
    parliament = pytest.importorskip("parliament")
    findings = parliament.analyze_policy_string(json.dumps(document), include_community_auditors=True).findings
    unexpected = []
    for finding in findings:
        if finding.issue == "RESOURCE_MISMATCH" and all(d["action"] == "ec2:RunInstances" for d in finding.detail):
            continue
        if finding.issue in ("PRIVILEGE_ESCALATION", "PERMISSIONS_MANAGEMENT_ACTIONS"):
            assert by_action(document, "iam:PassRole"), finding.issue
            continue
        unexpected.append((finding.issue, finding.detail))
    assert unexpected == []
