"""Spot workers (``--spot``) under moto: the launch request, the fallback to on-demand, provisioning."""

from __future__ import annotations

import base64

import pytest
from botocore.exceptions import ClientError

from nodeapp.web.dashboard import decision_view
from nodeapp.node import Node
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from provisioning import policies
from provisioning.ec2_launcher import Ec2SettingsError, Ec2WorkerSettings
from tests.aws_helpers import artifacts, aws, service_models  # noqa: F401
from tests.test_aws_cluster import cli, loopback_nodes, user_data  # noqa: F401
from tests.test_aws_launcher import NODE_URL, alive_ids, backlog, clock, env, instances, make_launcher  # noqa: F401

SPOT_OPTIONS = {"MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}


class RefusesSpot:
    """The moto-backed EC2 client, except that a spot RunInstances gets EC2's ``code`` error.

    Injected at the launcher's seam (its ``ec2`` client): every other call, and every on-demand
    launch, goes to moto unchanged.
    """

    def __init__(self, ec2, code: str) -> None:
        self._ec2, self.code, self.refused = ec2, code, 0

    def run_instances(self, **request):
        if "InstanceMarketOptions" in request:
            self.refused += 1
            raise ClientError({"Error": {"Code": self.code, "Message": "no spot capacity (test)"}}, "RunInstances")
        return self._ec2.run_instances(**request)

    def __getattr__(self, name):
        return getattr(self._ec2, name)


@pytest.fixture
def spot_env(env):  # noqa: F811
    env["environ"]["TM_WORKER_SPOT"] = "1"
    requests = []
    env["ec2"].meta.events.register(  # what the launcher's own client sends (it shares nothing else)
        "provide-client-params.ec2.RunInstances", lambda params, **_: requests.append(dict(params)))
    env["requests"] = requests
    return env


def scaler_for(launcher, clock):  # noqa: F811
    state = Node.build(max_workers=2, monotonic=clock, wall=clock)
    scaler = Scaler(state, launcher, PeerClient("", "token", "node-1"), node_url=NODE_URL,
                    scale_wait=0.0, hash_rate=1000.0, boot_timeout=300, monotonic=clock, wall=clock)
    return state, scaler


def recorded(launcher, spot_env):
    """The RunInstances requests the launcher's client sent to moto."""
    launcher.ec2.meta.events.register("provide-client-params.ec2.RunInstances",
                                      lambda params, **_: spot_env["requests"].append(dict(params)))
    return spot_env["requests"]


def test_spot_workers_keep_tags_imdsv2_and_shutdown_behaviour(spot_env, clock):  # noqa: F811
    ec2 = spot_env["ec2"]
    launcher = make_launcher(spot_env, clock)
    sent = recorded(launcher, spot_env)
    state, scaler = scaler_for(launcher, clock)
    backlog(state, count=5)
    scaler.tick()
    ids = alive_ids(ec2)
    assert len(ids) == 2 and {w.id for w in state.workers.workers()} == ids  # the same quota rules
    (request,) = sent
    assert request["InstanceMarketOptions"] == SPOT_OPTIONS
    for instance_id, inst in instances(ec2, ids).items():
        assert inst["InstanceLifecycle"] == "spot"
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags == {"tm-cluster": "demo", "tm-role": "worker", "tm-node": "node-1",
                        "Name": "tm-demo-worker-node-1"}
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        shutdown = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior")
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        script = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
        assert f"--idle-seconds 30 --spot {NODE_URL}\n" in script
    (decision,) = scaler.decisions()
    assert decision["launched"] == 2 and decision["notes"] == []


@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"])
def test_refused_spot_capacity_falls_back_to_on_demand_and_says_so(spot_env, clock, code):  # noqa: F811
    ec2 = spot_env["ec2"]
    launcher = make_launcher(spot_env, clock)
    launcher.ec2 = RefusesSpot(launcher.ec2, code)
    sent = recorded(launcher, spot_env)
    state, scaler = scaler_for(launcher, clock)
    backlog(state, count=5)
    scaler.tick()
    ids = alive_ids(ec2)
    assert launcher.ec2.refused == 1 and len(ids) == 2
    (request,) = sent  # only the on-demand launch reached EC2
    assert "InstanceMarketOptions" not in request
    for instance_id, inst in instances(ec2, ids).items():
        assert "InstanceLifecycle" not in inst
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        script = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
        assert "--spot" not in script
    (decision,) = scaler.decisions()
    assert decision["launched"] == 2
    assert decision["notes"] == [f"spot refused ({code}): 2 worker(s) launched on-demand"]
    assert code in decision_view(decision, "node-1")["reason"]  # the dashboard shows it


def test_other_errors_are_not_taken_for_missing_capacity(spot_env, clock):  # noqa: F811
    launcher = make_launcher(spot_env, clock)
    launcher.ec2 = RefusesSpot(launcher.ec2, "UnauthorizedOperation")
    state, scaler = scaler_for(launcher, clock)
    backlog(state, count=1)
    scaler.tick()
    assert alive_ids(spot_env["ec2"]) == set() and state.workers.workers() == []
    assert launcher.ec2.refused == 1


def test_spot_setting_is_checked():
    base = {"TM_CLUSTER": "demo", "TM_REGION": "us-east-1", "TM_WORKER_AMI": "ami-1",
            "TM_WORKER_INSTANCE_TYPE": "t3.micro", "TM_WORKER_SUBNETS": "subnet-1",
            "TM_WORKER_SECURITY_GROUP": "sg-1", "TM_WORKER_INSTANCE_PROFILE": "arn:aws:iam::1:instance-profile/p",
            "TM_WORKER_BUNDLE_URI": "s3://b/bundles/worker.tar", "TM_TOKEN_PARAMETER": "/tm/demo/token"}
    assert Ec2WorkerSettings.from_environ(base).spot is False
    assert Ec2WorkerSettings.from_environ({**base, "TM_WORKER_SPOT": "1"}).spot is True
    with pytest.raises(Ec2SettingsError, match="TM_WORKER_SPOT"):
        Ec2WorkerSettings.from_environ({**base, "TM_WORKER_SPOT": "maybe"})


def test_spot_flag_reaches_the_nodes_and_the_account_gets_the_spot_role(cli, aws, capsys, request):  # noqa: F811
    ec2, iam = aws.client("ec2"), aws.client("iam")
    calls: set[tuple[str, str]] = set()

    def record(event_name: str, model, **_):
        calls.add((model.service_model.signing_name, model.name))

    aws.events.register("before-call.*.*", record)
    request.addfinalizer(lambda: aws.events.unregister("before-call.*.*", record))
    code, out = cli("--cluster-name", "demo", "--spot")
    assert code == 0, capsys.readouterr().err
    assert "service-linked role for EC2 Spot" in out
    # (AWS names it AWSServiceRoleForEC2Spot; moto names it otherwise, so it is found by its path)
    assert len(iam.list_roles(PathPrefix="/aws-service-role/spot.amazonaws.com/")["Roles"]) == 1
    nodes = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:tm-role", "Values": ["node"]}])["Reservations"]
             for i in r["Instances"]]
    assert len(nodes) == 2
    for node in nodes:
        assert "\nTM_WORKER_SPOT=1\n" in user_data(ec2, node["InstanceId"])
        assert "InstanceLifecycle" not in node  # the nodes themselves stay on-demand
    needed = {action for service, op in calls for action in policies.actions_for(service, op)}
    assert "iam:CreateServiceLinkedRole" in needed and needed - set(policies.CALLER_ACTIONS) == set()
    # --destroy leaves the account's spot role alone; a second --spot cluster finds it there
    assert cli("--destroy", "--cluster-name", "demo")[0] == 0
    code, out = cli("--cluster-name", "demo", "--spot")
    assert code == 0 and "service-linked role" not in out
