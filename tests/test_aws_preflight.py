"""Checks before anything is created (provisioning/preflight.py), under moto. Answers moto does not
give (a vCPU quota, a customer managed EBS key) are played by a ``before-call`` hook on the real
client, the way moto itself answers."""

from __future__ import annotations

import io
import json

import pytest
from botocore.awsrequest import AWSResponse

import run_program
from provisioning import preflight
from provisioning.network import NetworkWrapper
from tests.aws_helpers import REGION, aws, service_models  # noqa: F401
from tmrun.aws import run_aws


def answer(client, operation: str, reply: dict, status: int = 200) -> None:
    """From now on ``client`` gets ``reply`` for ``operation`` (replacing an earlier answer)."""
    event = f"before-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"
    client.meta.events.unregister(event, unique_id=f"test-{operation}")
    client.meta.events.register_first(event, lambda **_: (AWSResponse("https://aws.example/", status, {}, None), reply),
                                      unique_id=f"test-{operation}")


@pytest.fixture
def setting(aws):  # noqa: F811
    ec2, quotas = aws.client("ec2"), aws.client("service-quotas")
    records = NetworkWrapper(ec2).default_subnet_records(NetworkWrapper(ec2).default_vpc())
    return ec2, quotas, records


def check(setting, **kwargs):
    ec2, quotas, records = setting
    args = {"node_type": "t3.micro", "worker_type": "t3.micro", "max_workers": 5, **kwargs}
    return preflight.run(ec2, quotas, args.pop("records", records), **args)


def test_subnets_in_zones_that_do_not_offer_the_type_are_left_out(setting):
    ec2, _, records = setting
    checked = check(setting)
    zone_of = {r["SubnetId"]: r["AvailabilityZone"] for r in records}
    assert f"{REGION}e" in zone_of.values()  # moto's us-east-1e offers no t3.micro
    assert {zone_of[s] for s in checked.worker_subnets} == {zone_of[s] for s in checked.node_subnets} == (
        set(zone_of.values()) - {f"{REGION}e"})
    (warning,) = checked.warnings  # moto has no EC2 quotas: the needed vCPUs are said
    assert "could not read the on-demand vCPU quota" in warning and "24 vCPUs" in warning
    only_e = [r for r in records if r["AvailabilityZone"] == f"{REGION}e"]
    with pytest.raises(preflight.PreflightFailed, match="t3.micro .nodes. is not offered in any zone"):
        check(setting, records=only_e)


def test_subnets_without_public_ips_are_refused(setting):
    ec2, _, records = setting
    ec2.modify_subnet_attribute(SubnetId=records[0]["SubnetId"], MapPublicIpOnLaunch={"Value": False})
    fresh = NetworkWrapper(ec2).default_subnet_records(NetworkWrapper(ec2).default_vpc())
    with pytest.raises(preflight.PreflightFailed, match=f"{records[0]['SubnetId']} do not give instances a public"):
        check(setting, records=fresh)


def test_a_vcpu_quota_below_what_the_cluster_can_use_is_refused(setting):
    ec2, quotas, _ = setting
    answer(quotas, "GetServiceQuota", {"Quota": {"Value": 16.0}})
    with pytest.raises(preflight.PreflightFailed) as failed:
        check(setting)  # 2 x 2 + 2 x 5 x 2 = 24 vCPUs
    assert "quota for on-demand standard instances is 16, its running instances use 0, the cluster can use 24 " \
           "more" in str(failed.value)
    assert check(setting, max_workers=3).warnings == []  # 16 vCPUs: enough


def test_vcpus_already_in_use_count_against_the_quota(setting):
    ec2, quotas, _ = setting
    answer(quotas, "GetServiceQuota", {"Quota": {"Value": 16.0}})
    assert check(setting, max_workers=3).warnings == []  # 2 x 2 + 2 x 3 x 2 = 16
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2, InstanceType="t3.micro")  # someone's 4 vCPUs
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="p3.2xlarge")  # not standard
    assert preflight.vcpus_in_use(ec2) == {"on-demand": 4, "spot": 0}
    with pytest.raises(preflight.PreflightFailed, match="is 16, its running instances use 4, the cluster can use 16 more"):
        check(setting, max_workers=3)


def test_with_spot_the_workers_are_checked_against_the_spot_quota(setting):
    ec2, quotas, _ = setting
    asked = []

    def quota(params, **_):
        asked.append(json.loads(params["body"])["QuotaCode"])
        value = {"L-1216C47A": 4.0, "L-34B43A08": 8.0}[asked[-1]]
        return AWSResponse("https://aws.example/", 200, {}, None), {"Quota": {"Value": value}}

    quotas.meta.events.register_first("before-call.service-quotas.GetServiceQuota", quota)
    with pytest.raises(preflight.PreflightFailed) as failed:  # 2 x 5 x 2 = 20 spot vCPUs, 8 allowed
        check(setting, spot=True)
    assert "quota for spot standard instances is 8" in str(failed.value) and "2 x 5 spot workers" in str(failed.value)
    assert "on-demand" not in str(failed.value)  # the nodes (4 vCPUs) fit the on-demand quota of 4
    assert asked == ["L-1216C47A", "L-34B43A08"]
    assert check(setting, spot=True, max_workers=2).warnings == []


@pytest.mark.parametrize("role", ["node", "worker"])
def test_an_unknown_instance_type_is_named_clearly(setting, role):
    with pytest.raises(preflight.PreflightFailed) as failed:
        check(setting, **{f"{role}_type": "c7x.hyper"})
    assert str(failed.value) == (f"instance type c7x.hyper ({role}s) does not exist in {REGION}: check the spelling "
                                 "(e.g. t3.micro, c7a.large) or `aws ec2 describe-instance-type-offerings`")


def test_a_customer_managed_ebs_key_and_an_unreadable_one_are_warnings(setting):
    """The node role has the EBS grants through EC2 (kms:ViaService); the key's policy must allow them."""
    ec2, _, _ = setting
    ec2.enable_ebs_encryption_by_default()
    answer(ec2, "GetEbsDefaultKmsKeyId", {"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, 403)
    assert any("EBS encryption by default is on and its key could not be read (UnauthorizedOperation)" in w
               for w in check(setting).warnings)
    answer(ec2, "GetEbsDefaultKmsKeyId", {"KmsKeyId": "arn:aws:kms:us-east-1:123456789012:key/1234abcd"})
    assert any("customer managed KMS key arn:aws:kms:us-east-1:123456789012:key/1234abcd" in w
               and "key's policy" in w for w in check(setting).warnings)


def test_preflight_failure_creates_nothing(aws, monkeypatch, capsys):  # noqa: F811
    ec2 = aws.client("ec2")
    for record in NetworkWrapper(ec2).default_subnet_records(NetworkWrapper(ec2).default_vpc()):
        ec2.modify_subnet_attribute(SubnetId=record["SubnetId"], MapPublicIpOnLaunch={"Value": False})
    args = run_program.build_parser().parse_args(["--cluster-name", "demo", "--allow-cidr", "198.51.100.7/32"])
    code = run_aws(args, session=aws, out=io.StringIO(), sleep=lambda s: None, environ={},
                   artifacts=lambda work_dir: NeverBuilt())
    err = capsys.readouterr().err
    assert code == 1 and "check before creating anything" in err and "public IPv4" in err
    assert "already created" not in err
    assert aws.client("ssm").describe_parameters()["Parameters"] == []


class NeverBuilt:
    """Artifacts that fail the test if anything asks for them: nothing is built when a check fails."""

    def bundle(self, role, arch):
        pytest.fail("a bundle was built although a check failed")


@pytest.mark.parametrize("flag", ["--allow-cidr", "--ssh-cidr"])
def test_an_ipv6_cidr_is_refused_clearly(flag, capsys):
    with pytest.raises(SystemExit) as exited:
        run_program.build_parser().parse_args([flag, "2001:db8::/64"])
    assert exited.value.code == 2
    assert "IPv6: the nodes have public IPv4 addresses only" in capsys.readouterr().err
