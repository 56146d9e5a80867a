"""The whole AWS flow of run_program.py against moto: create, report the existing cluster, destroy.

The nodes' /health and /stats are answered by real node apps on loopback: ``reach`` maps each
instance's (moto-invented) public IP to one of them, so no packet goes to those addresses. The
code delivered is the real build (``artifacts``, made once per test session).
"""

from __future__ import annotations

import base64
import io
import json
import socket

import pytest

import run_program
from provisioning import policies
from provisioning.cluster import wait_healthy
from provisioning.instances import AMI_PARAMETER
from provisioning.naming import ClusterNames
from tests.aws_helpers import REGION, LoopbackNode, artifacts, aws, service_models  # noqa: F401
from tmrun.aws import run_aws

TOKEN = "cluster-token-from-the-environment"
CLIENT_CIDR = "198.51.100.7/32"


@pytest.fixture
def loopback_nodes():
    nodes = {name: LoopbackNode(name, TOKEN) for name in ("node-1", "node-2")}
    yield nodes
    for node in nodes.values():
        node.close()


@pytest.fixture
def cli(aws, loopback_nodes, artifacts, monkeypatch):  # noqa: F811
    """run_program's parser and run_aws, with moto, loopback nodes and no real sleeping."""
    monkeypatch.setenv("CLUSTER_TOKEN", TOKEN)
    monkeypatch.setenv("SCALE_WAIT", "3")
    ec2 = aws.client("ec2")
    reached: list[str] = []

    def reach(public_ip: str) -> str:
        for reservation in ec2.describe_instances(
                Filters=[{"Name": "ip-address", "Values": [public_ip]}])["Reservations"]:
            for instance in reservation["Instances"]:
                name = {t["Key"]: t["Value"] for t in instance["Tags"]}["Name"]
                reached.append(public_ip)
                return loopback_nodes[name].url
        raise AssertionError(f"no instance has public IP {public_ip}")

    def run(*argv: str, find_public_cidr=lambda: CLIENT_CIDR, reach=reach) -> tuple[int, str]:
        out = io.StringIO()
        args = run_program.build_parser().parse_args(list(argv))
        code = run_aws(args, session=aws, reach=reach, find_public_cidr=find_public_cidr, out=out,
                       sleep=lambda seconds: None, artifacts=lambda work_dir: artifacts)
        return code, out.getvalue()

    run.reached = reached
    return run


def cluster_instances(ec2, states=("pending", "running")) -> list[dict]:
    reply = ec2.describe_instances(Filters=[{"Name": "tag:tm-cluster", "Values": ["demo"]},
                                            {"Name": "instance-state-name", "Values": list(states)}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def user_data(ec2, instance_id: str) -> str:
    value = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(value).decode()


def test_create_report_destroy(cli, aws, loopback_nodes, artifacts, capsys, request):  # noqa: F811
    ec2, iam, ssm, s3 = (aws.client(n) for n in ("ec2", "iam", "ssm", "s3"))
    names = ClusterNames("demo", aws.client("sts").get_caller_identity()["Account"], REGION)

    calls: set[tuple[str, str]] = set()

    def record(event_name: str, model, **_):
        calls.add((model.service_model.signing_name, model.name))

    aws.events.register("before-call.*.*", record)  # clients made from now on report their calls
    cli.unregister = lambda: aws.events.unregister("before-call.*.*", record)
    request.addfinalizer(cli.unregister)  # the Session is shared by all AWS tests

    code, out = cli("--cluster-name", "demo", "--max-workers", "3", "--node-instance-type", "t3.small")
    assert code == 0, capsys.readouterr().err
    nodes = sorted(cluster_instances(ec2), key=lambda i: {t["Key"]: t["Value"] for t in i["Tags"]}["Name"])
    assert len(nodes) == 2
    ips = [n["PublicIpAddress"] for n in nodes]
    assert f"2 EC2 instances are up with IP 1 [{ips[0]}] 2 [{ips[1]}]" in out
    assert "node-1 up, node-2 up" in out and "Our EC2 instances are ready" in out
    assert f"open to {CLIENT_CIDR} (this machine)" in out
    assert sorted(set(cli.reached)) == sorted(ips)

    # no token crossed the internet: only public endpoints were called, without X-Cluster-Token;
    # each node finds its peer by tag at boot, and gets its maximum in its user-data
    for node in loopback_nodes.values():
        assert node.calls and {(method, path) for method, path, _ in node.calls} <= {("GET", "/health"),
                                                                                 ("GET", "/stats")}
        assert not [call for call in node.calls if call[2]]
    assert "node-1: " in out and "peer node-2 not found yet" in out  # the loopback nodes have no peer
    # how to reach them with tm: the client key and the operator token are read from SSM, never printed
    assert (f"export TM_API_KEY=$(aws ssm get-parameter --region {REGION} --with-decryption --name "
            "/tm/demo/client-key --query Parameter.Value --output text)") in out
    assert "export TM_TOKEN=$(aws ssm get-parameter" in out and "/tm/demo/operator-token" in out

    # the node instances
    ami = ssm.get_parameter(Name=AMI_PARAMETER.format(arch="x86_64"))["Parameter"]["Value"]
    groups = {g["GroupName"]: g for g in ec2.describe_security_groups(
        Filters=[{"Name": "tag:tm-cluster", "Values": ["demo"]}])["SecurityGroups"]}
    node_sg, worker_sg = groups["tm-demo-node"], groups["tm-demo-worker"]
    for index, node in enumerate(nodes, start=1):
        tags = {t["Key"]: t["Value"] for t in node["Tags"]}
        assert tags == {"tm-cluster": "demo", "tm-role": "node", "Name": f"node-{index}"}
        assert node["ImageId"] == ami and node["InstanceType"] == "t3.small"
        assert node["MetadataOptions"]["HttpTokens"] == "required"
        assert node["IamInstanceProfile"]["Arn"] == names.profile_arn("node")
        assert [g["GroupId"] for g in node["SecurityGroups"]] == [node_sg["GroupId"]]
        script = user_data(ec2, node["InstanceId"])
        assert TOKEN not in script
        worker_bundle = artifacts.bundle("worker", "x86_64")
        for line in (f"NODE_NAME=node-{index}", "LAUNCHER=ec2", "API_KEYS=required", "MAX_NUM_OF_WORKERS=3", "SCALE_WAIT=3",
                     f"TM_WORKER_SECURITY_GROUP={worker_sg['GroupId']}", f"TM_WORKER_AMI={ami}",
                     f"TM_TOKEN_PARAMETER={names.token_parameter}", "TM_WORKER_INSTANCE_TYPE=c7a.large",
                     f"TM_WORKER_BUNDLE_URI=s3://{names.bucket}/{worker_bundle.key}",
                     f"TM_WORKER_INSTANCE_PROFILE={names.profile_arn('worker')}"):
            assert f"\n{line}\n" in script
        subnets = next(line for line in script.splitlines() if line.startswith("TM_WORKER_SUBNETS="))
        assert subnets.split("=")[1].split(",")[0] == node["SubnetId"]  # its own zone first
        assert f"--cluster demo --peer node-{3 - index} --port 8000" in script  # the peer, found by tag
        assert (f"CLUSTER_TOKEN={names.token_parameter} PEER_TOKEN=/tm/demo/peer-token "
                "OPERATOR_TOKEN=/tm/demo/operator-token API_KEY=/tm/demo/client-key") in script
    assert ec2.describe_instance_attribute(InstanceId=nodes[0]["InstanceId"],
        Attribute="instanceInitiatedShutdownBehavior")["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"
    # t3 nodes in standard credit mode: a busy node is slowed to its baseline, never billed for credits
    credits = ec2.describe_instance_credit_specifications(InstanceIds=[n["InstanceId"] for n in nodes])
    assert [c["CpuCredits"] for c in credits["InstanceCreditSpecifications"]] == ["standard", "standard"]

    # security groups: node port from the clients, the workers and the peer; workers: no inbound
    (rule,) = node_sg["IpPermissions"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 8000, 8000)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == [CLIENT_CIDR]
    assert {p["GroupId"] for p in rule["UserIdGroupPairs"]} == {node_sg["GroupId"], worker_sg["GroupId"]}
    assert worker_sg["IpPermissions"] == []

    # IAM: the documents attached are the least-privilege ones checked in test_aws_policies
    roles = {r["RoleName"] for r in iam.list_roles(PathPrefix=names.iam_path)["Roles"]}
    assert roles == {"tm-demo-node", "tm-demo-worker"}
    for role in roles:  # capped by the cluster's permissions boundary
        assert iam.get_role(RoleName=role)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == \
            names.boundary_arn
    attached = iam.list_attached_role_policies(RoleName="tm-demo-worker")["AttachedPolicies"]
    (worker_policy,) = [p["PolicyArn"] for p in attached]
    version = iam.get_policy(PolicyArn=worker_policy)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=worker_policy, VersionId=version)["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else document
    assert document == policies.worker_policy(names, worker_bundle.key)
    profile = iam.get_instance_profile(InstanceProfileName="tm-demo-node")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["tm-demo-node"]

    # the tokens: SecureStrings in SSM, three different ones; the bundles: in the cluster's private bucket
    values = set()
    for kind in ("worker", "peer", "operator", "client"):
        parameter = ssm.get_parameter(Name=names.token_parameter_of(kind), WithDecryption=True)["Parameter"]
        assert parameter["Type"] == "SecureString" and len(parameter["Value"]) >= 32
        values.add(parameter["Value"])
    assert len(values) == 4 and TOKEN in values  # the worker token is CLUSTER_TOKEN of the environment
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=names.bucket)["Contents"])
    assert keys == sorted([artifacts.bundle("node", "x86_64").key, worker_bundle.key])
    block = s3.get_public_access_block(Bucket=names.bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    (deny,) = aws.bucket_policies[names.bucket]["Statement"]  # requests without TLS are refused
    assert deny == {"Sid": "DenyWithoutTls", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                    "Resource": [f"arn:aws:s3:::{names.bucket}", f"arn:aws:s3:::{names.bucket}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}}}

    # a second run reports the cluster instead of creating another
    code, out = cli("--cluster-name", "demo", "--max-workers", "3")
    assert code == 0
    assert "already exists" in out and f"IP 1 [{ips[0]}] 2 [{ips[1]}]" in out
    assert len(cluster_instances(ec2)) == 2

    # a worker launched by a node is removed by --destroy too
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "tm-cluster", "Value": "demo"},
                                              {"Key": "tm-role", "Value": "worker"}]}])
    code, out = cli("--destroy", "--cluster-name", "demo")
    cli.unregister()
    assert code == 0, capsys.readouterr().err
    assert out.count("removed instance i-") == 3
    for item in ("security group tm-demo-node", "security group tm-demo-worker", "role tm-demo-node",
                 "role tm-demo-worker", "policy tm-demo-node", "policy tm-demo-worker", "policy tm-demo-boundary",
                 "instance profile tm-demo-node", "instance profile tm-demo-worker",
                 "parameter /tm/demo/cluster-token", "parameter /tm/demo/peer-token",
                 "parameter /tm/demo/operator-token", "parameter /tm/demo/client-key", f"bucket {names.bucket}"):
        assert f"removed {item}" in out
    assert_nothing_left(aws, names)

    code, out = cli("--destroy", "--cluster-name", "demo")
    assert code == 0 and "nothing to remove" in out

    # docs/aws.md lists policies.CALLER_ACTIONS as what the caller needs: it covers every call made
    assert {"RunInstances", "CreatePolicy", "TerminateInstances", "DeleteBucket"} <= {op for _, op in calls}
    needed = {action for service, op in calls for action in policies.actions_for(service, op)}
    assert needed - set(policies.CALLER_ACTIONS) == set()


def assert_nothing_left(aws, names: ClusterNames) -> None:  # noqa: F811
    ec2, iam, ssm, s3 = (aws.client(n) for n in ("ec2", "iam", "ssm", "s3"))
    assert cluster_instances(ec2, ("pending", "running", "stopping", "stopped", "shutting-down")) == []
    assert ec2.describe_security_groups(Filters=[{"Name": "tag:tm-cluster", "Values": [names.cluster]}])[
        "SecurityGroups"] == []
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].startswith("tm-")]
    assert iam.list_roles(PathPrefix=names.iam_path)["Roles"] == []
    assert iam.list_policies(Scope="Local", PathPrefix=names.iam_path)["Policies"] == []
    assert iam.list_instance_profiles(PathPrefix=names.iam_path)["InstanceProfiles"] == []
    assert [p["Name"] for p in ssm.describe_parameters()["Parameters"] if p["Name"].startswith("/tm/")] == []
    assert names.bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_aws_error_midway_names_the_step_and_what_exists(cli, aws, capsys):  # noqa: F811
    iam = aws.client("iam")
    # someone else's role already has the name our node role needs: CreateRole fails
    iam.create_role(RoleName="tm-demo-node", AssumeRolePolicyDocument=json.dumps(policies.trust_policy()))
    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR)
    err = capsys.readouterr().err
    assert code == 1
    assert "step 'create the IAM roles, policies and instance profiles' failed: EntityAlreadyExists" in err
    for item in ("parameter /tm/demo/cluster-token", "bucket tm-demo-", "security group tm-demo-node",
                 "security group tm-demo-worker", "role tm-demo-worker", "policy tm-demo-worker",
                 "instance profile tm-demo-worker"):
        assert f"\n  {item}" in err
    assert "--destroy" in err
    assert TOKEN not in err

    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR)
    assert code == 1 and "half there" in capsys.readouterr().err

    code, out = cli("--destroy", "--cluster-name", "demo")
    assert code == 0 and "removed role tm-demo-worker" in out
    names = ClusterNames("demo", aws.client("sts").get_caller_identity()["Account"], REGION)
    assert_nothing_left(aws, names)
    assert iam.get_role(RoleName="tm-demo-node")["Role"]["Path"] == "/"  # not ours: left alone


def test_no_public_ip_found_asks_for_allow_cidr_and_creates_nothing(cli, aws, capsys):  # noqa: F811
    def offline() -> str:
        raise OSError("no route")

    code, _ = cli("--cluster-name", "demo", find_public_cidr=offline)
    assert code == 2
    assert "--allow-cidr" in capsys.readouterr().err
    assert aws.client("ec2").describe_security_groups(
        Filters=[{"Name": "tag:tm-cluster", "Values": ["demo"]}])["SecurityGroups"] == []


def test_ssh_only_with_key_and_cidr(cli, aws, capsys):  # noqa: F811
    ec2 = aws.client("ec2")
    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR, "--ssh-cidr", "203.0.113.0/24")
    assert code == 2 and "--key-name" in capsys.readouterr().err
    ec2.create_key_pair(KeyName="ops")
    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR, "--ssh-cidr", "203.0.113.0/24",
                  "--key-name", "ops")
    assert code == 0, capsys.readouterr().err
    (group,) = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["tm-demo-node"]}])[
        "SecurityGroups"]
    ssh = [p for p in group["IpPermissions"] if p["FromPort"] == 22]
    assert [r["CidrIp"] for r in ssh[0]["IpRanges"]] == ["203.0.113.0/24"]
    assert {i["KeyName"] for i in cluster_instances(ec2)} == {"ops"}


def test_missing_credentials_one_clear_line(monkeypatch, tmp_path, capsys):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    code = run_program.main(["--cluster-name", "demo"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "--local"):
        assert word in err


def test_health_wait_polls_with_a_deadline_and_shows_progress(loopback_nodes):
    closed = closed_loopback_url()
    now = [0.0]
    out = io.StringIO()

    def sleep(seconds: float) -> None:
        now[0] += seconds

    ok = wait_healthy({"node-1": loopback_nodes["node-1"].url, "node-2": closed}, 30, out,
                      clock=lambda: now[0], sleep=sleep, interval=5)
    lines = out.getvalue().splitlines()
    assert ok is False
    assert len(lines) == 7 and now[0] == 30  # a line per poll, every 5 s, up to the deadline
    assert lines[0].endswith("node-1 up, node-2 booting") and "[  30s/30s]" in lines[-1]


def closed_loopback_url() -> str:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_nodes_never_healthy_is_reported_and_the_cluster_kept(cli, aws, capsys):  # noqa: F811
    closed = closed_loopback_url()
    code, out = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR, "--health-timeout", "0",
                    reach=lambda ip: closed)
    err = capsys.readouterr().err
    assert code == 1
    assert "did not answer /health within 0s" in err and "--destroy" in err
    assert "node-1 booting, node-2 booting" in out
    assert len(cluster_instances(aws.client("ec2"))) == 2


def test_bad_setting_stops_before_anything_is_created(cli, aws, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("MAX_NUM_OF_WORKERS", "lots")
    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR)
    assert code == 2 and "MAX_NUM_OF_WORKERS='lots'" in capsys.readouterr().err
    assert aws.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/tm/"]}])["Parameters"] == []


@pytest.mark.parametrize("error_code, message, retried", [
    ("InvalidParameterValue", "Value (arn:aws:iam::123456789012:instance-profile/tm/demo/tm-demo-node) for "
     "parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN", True),
    ("InsufficientInstanceCapacity", "We currently do not have sufficient t3.micro capacity", False),
])
def test_launch_retries_only_while_the_new_profile_propagates(aws, error_code, message, retried):  # noqa: F811
    """moto has no IAM propagation delay, so botocore's Stubber plays the first answer."""
    from botocore.exceptions import ClientError
    from botocore.stub import Stubber

    from provisioning.cluster import AwsClients, ClusterSpec, Provisioner

    ec2 = aws.client("ec2")
    clients = AwsClients(ec2, None, None, None, None)
    slept: list[float] = []
    provisioner = Provisioner(clients, ClusterSpec(name="demo", region=REGION, allow_cidr=CLIENT_CIDR),
                              out=io.StringIO(), sleep=slept.append)
    request = {"ImageId": "ami-12345678", "MinCount": 1, "MaxCount": 1}
    with Stubber(ec2) as stub:
        stub.add_client_error("run_instances", error_code, message)
        if retried:
            stub.add_response("run_instances", {"Instances": [{"InstanceId": "i-0abc"}]})
            assert provisioner._run_when_profile_ready(request) == "i-0abc"
            assert slept == [5]
        else:
            with pytest.raises(ClientError):
                provisioner._run_when_profile_ready(request)
            assert slept == []
        stub.assert_no_pending_responses()


def test_leftovers_include_orphaned_policies_and_instance_profiles(aws):  # noqa: F811
    """A half-removed cluster may keep only a policy or an instance profile: still 'half there'."""
    from provisioning.cluster import AwsClients, ClusterSpec, Provisioner

    iam = aws.client("iam")
    names = ClusterNames("demo", aws.client("sts").get_caller_identity()["Account"], REGION)
    provisioner = Provisioner(AwsClients.from_session(aws, REGION),
                              ClusterSpec(name="demo", region=REGION, allow_cidr=CLIENT_CIDR), out=io.StringIO())
    assert provisioner.leftovers() == []
    iam.create_policy(PolicyName="tm-demo-node", Path=names.iam_path, PolicyDocument=json.dumps(
        policies.boundary_policy(names)))
    iam.create_instance_profile(InstanceProfileName="tm-demo-worker", Path=names.iam_path)
    iam.create_policy(PolicyName="tm-other-node", Path="/tm/other/", PolicyDocument=json.dumps(
        policies.boundary_policy(names)))  # another cluster's: not ours
    assert provisioner.leftovers() == ["policy tm-demo-node", "instance profile tm-demo-worker"]
    assert provisioner.teardown() == ["instance profile tm-demo-worker", "policy tm-demo-node"]
    assert provisioner.leftovers() == []


def test_node_2_goes_to_another_subnet_when_its_zone_has_no_capacity(cli, aws):  # noqa: F811
    """InsufficientInstanceCapacity for a node in its zone: the next offered subnet is tried."""
    from botocore.awsrequest import AWSResponse

    refused = []

    def no_capacity_for_node_2(params, **_):
        body = params.get("body") or {}
        if "node-2" in str(body) and not refused:
            refused.append(body["SubnetId"])
            return AWSResponse("https://ec2.amazonaws.com/", 500, {}, None), {
                "Error": {"Code": "InsufficientInstanceCapacity", "Message": "none here (played by the test)"},
                "ResponseMetadata": {}}
        return None

    aws.events.register_first("before-call.ec2.RunInstances", no_capacity_for_node_2, unique_id="no-capacity")
    try:
        code, out = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR)
    finally:
        aws.events.unregister("before-call.ec2.RunInstances", unique_id="no-capacity")
    assert code == 0
    assert f"InsufficientInstanceCapacity in {refused[0]}: trying another zone's subnet" in out
    ec2 = aws.client("ec2")
    by_name = {tag_of(i, "Name"): i for i in cluster_instances(ec2)}
    assert set(by_name) == {"node-1", "node-2"} and by_name["node-2"]["SubnetId"] != refused[0]
    script = user_data(ec2, by_name["node-2"]["InstanceId"])  # its workers: its new zone first
    subnets = next(line for line in script.splitlines() if line.startswith("TM_WORKER_SUBNETS="))
    assert subnets.split("=")[1].split(",")[0] == by_name["node-2"]["SubnetId"]


def tag_of(instance: dict, key: str) -> str:
    return {t["Key"]: t["Value"] for t in instance["Tags"]}[key]


def test_user_data_that_cannot_be_rendered_stops_before_anything_is_created(cli, aws, monkeypatch, capsys):  # noqa: F811
    """Both scripts are rendered in the pre-flight step: a node setting user-data cannot carry stops
    the run there, with nothing made."""
    monkeypatch.setenv("LOG_LEVEL", "info;reboot")  # not a shell-safe value
    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR)
    err = capsys.readouterr().err
    assert code == 1 and "step 'check before creating anything" in err and "LOG_LEVEL='info;reboot'" in err
    assert "already created" not in err
    assert aws.client("ssm").describe_parameters()["Parameters"] == []


def test_worker_peer_url_of_the_callers_environment_does_not_reach_the_nodes(cli, aws, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WORKER_PEER_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("SCALE_INTERVAL", "1.5")
    code, _ = cli("--cluster-name", "demo", "--allow-cidr", CLIENT_CIDR)
    assert code == 0
    for node in cluster_instances(aws.client("ec2")):
        script = user_data(aws.client("ec2"), node["InstanceId"])
        assert "\nSCALE_INTERVAL=1.5\n" in script and "WORKER_PEER_URL" not in script
