"""The EC2 launcher under the scaler's decisions, against moto (every call in the test thread)."""

from __future__ import annotations

import base64
import dataclasses
import logging

import pytest
from botocore.awsrequest import AWSResponse

from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from nodeapp.node import Node
from provisioning.ec2_launcher import Ec2Launcher, Ec2SettingsError, Ec2WorkerSettings
from tests.aws_helpers import REGION, aws, service_models, worker_launch_setting  # noqa: F401
from tests.helpers import Clock

NODE_URL = "http://10.0.0.10:8000"
PEER_URL = ""  # no peer: borrowing is covered by the scaler's own tests
BOOT_TIMEOUT = 300.0


@pytest.fixture
def env(aws):  # noqa: F811
    """What provisioning would have made, and the TM_* variables a node's user-data sets."""
    ec2 = aws.client("ec2")
    environ = {**worker_launch_setting(ec2, aws.client("iam"), aws.client("ssm"),
                                       aws.client("sts").get_caller_identity()["Account"]), "TM_LIST_GRACE": "60"}
    return {"ec2": ec2, "session": aws, "environ": environ, "ami": environ["TM_WORKER_AMI"],
            "subnet": environ["TM_WORKER_SUBNETS"], "sg": environ["TM_WORKER_SECURITY_GROUP"],
            "profile_arn": environ["TM_WORKER_INSTANCE_PROFILE"]}


@pytest.fixture
def clock():
    return Clock(1_000_000.0)


def make_launcher(env, clock, node_name="node-1") -> Ec2Launcher:
    launcher = Ec2Launcher.from_environment(token="ignored", idle_seconds=30, node_name=node_name,
                                            environ=env["environ"], session=env["session"])
    launcher._clock = clock
    launcher.ec2.meta.events.register("provide-client-params.ec2.RunInstances", has_capacity_for_all)
    return launcher


def has_capacity_for_all(params, **_):
    """moto launches MinCount instances where EC2 launches as many as it can up to MaxCount: the
    launcher asks MinCount 1 (checked here), and moto is told to play an EC2 with room for all."""
    assert params["MinCount"] == 1
    params["MinCount"] = params["MaxCount"]


@pytest.fixture
def node(env, clock):
    state = Node.build(max_workers=3, monotonic=clock, wall=clock)
    launcher = make_launcher(env, clock)
    scaler = Scaler(state, launcher, PeerClient(PEER_URL, "token", "node-1"), node_url=NODE_URL,
                    scale_wait=0.0, hash_rate=1000.0, boot_timeout=BOOT_TIMEOUT, monotonic=clock, wall=clock)
    return state, launcher, scaler


def instances(ec2, ids=None) -> dict[str, dict]:
    kwargs = {"InstanceIds": list(ids)} if ids else {}
    return {i["InstanceId"]: i for r in ec2.describe_instances(**kwargs)["Reservations"] for i in r["Instances"]}


def alive_ids(ec2) -> set[str]:
    return {i for i, inst in instances(ec2).items() if inst["State"]["Name"] in ("pending", "running")}


def backlog(state, count=20, iterations=100_000):
    for n in range(count):
        state.tasks.submit(b"task-%d" % n, iterations)


def test_backlog_launches_configured_workers_never_more_than_max(env, node):
    state, launcher, scaler = node
    ec2 = env["ec2"]
    backlog(state)
    scaler.tick()
    scaler.tick()  # pending workers count: a second run launches nothing more
    ids = alive_ids(ec2)
    assert len(ids) == 3
    assert {w.id for w in state.workers.workers()} == ids
    assert state.scaling_figures().pending == 3
    for instance_id, inst in instances(ec2, ids).items():
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags == {"tm-cluster": "demo", "tm-role": "worker", "tm-node": "node-1",
                        "Name": "tm-demo-worker-node-1"}
        assert inst["ImageId"] == env["ami"]
        assert inst["InstanceType"] == "t3.micro"
        assert inst["SubnetId"] == env["subnet"]
        assert [g["GroupId"] for g in inst["SecurityGroups"]] == [env["sg"]]
        # moto associates the profile with the first instance of a multi-instance launch only
        if inst["AmiLaunchIndex"] == 0:
            assert inst["IamInstanceProfile"]["Arn"] == env["profile_arn"]
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        shutdown = ec2.describe_instance_attribute(InstanceId=instance_id,
                                                   Attribute="instanceInitiatedShutdownBehavior")
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        user_data = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
        assert f"--worker-id ${{INSTANCE_ID}} --lanes auto --idle-seconds 30 {NODE_URL}\n" in user_data
        assert env["environ"]["TM_WORKER_BUNDLE_URI"] in user_data
        assert "token" not in "".join(tags.values()) and "ignored" not in user_data
    first, second = reversed(scaler.decisions())
    assert first["launched"] == 3 and second["launched"] == 0


def test_worker_down_terminates_the_instance(env, node):
    state, launcher, scaler = node
    ec2 = env["ec2"]
    backlog(state, count=1)
    scaler.tick()
    (worker_id,) = alive_ids(ec2)
    assert [t.id for t in state.claim(worker_id, 1)]  # first claim: the worker is live
    assert state.worker_down(worker_id).removed  # what POST /worker_down does
    scaler.tick()
    assert instances(ec2, [worker_id])[worker_id]["State"]["Name"] in ("shutting-down", "terminated")
    assert worker_id not in {w.id for w in state.workers.workers()}


def test_pending_past_boot_timeout_is_terminated(env, node, clock, caplog):
    state, launcher, scaler = node
    ec2 = env["ec2"]
    backlog(state, count=1)
    scaler.tick()
    (stuck,) = alive_ids(ec2)
    clock.now += BOOT_TIMEOUT - 1
    scaler.tick()
    assert stuck in alive_ids(ec2), "terminated before BOOT_TIMEOUT"
    clock.now += 2
    with caplog.at_level(logging.WARNING, logger="nodeapp.fleet.scaling"):
        scaler.tick()
    assert instances(ec2, [stuck])[stuck]["State"]["Name"] in ("shutting-down", "terminated")
    assert stuck not in {w.id for w in state.workers.workers()}
    assert "BOOT_TIMEOUT" in caplog.text
    assert alive_ids(ec2) == set()  # a failed boot holds launches back 30 s (nodeapp/fleet/backoff.py)
    clock.now += 30
    scaler.tick()
    assert len(alive_ids(ec2)) == 1  # the task still waits: one replacement, not more


def test_instance_terminated_behind_the_nodes_back_is_forgotten(env, node, clock):
    state, launcher, scaler = node
    ec2 = env["ec2"]
    backlog(state, count=2)
    scaler.tick()
    ids = sorted(alive_ids(ec2))
    assert len(ids) == 2
    state.claim(ids[0], 1)
    state.claim(ids[1], 1)  # both live, both holding a task; the queue is empty
    ec2.terminate_instances(InstanceIds=[ids[0]])  # e.g. a spot reclaim or a person in the console
    launcher.settings = dataclasses.replace(launcher.settings, describe_ttl=1.0)
    clock.now += 1  # the next DescribeInstances (TM_DESCRIBE_TTL), well within the tasks' leases
    scaler.tick()
    workers = {w.id for w in state.workers.workers()}
    assert ids[0] not in workers and ids[1] in workers
    assert state.workers.counts().down_total == 1
    # its task went back to the queue, and the same run launched one replacement for it
    (replacement,) = workers - {ids[1]}
    assert alive_ids(ec2) == {ids[1], replacement}
    assert state.scaling_figures().queued == 1


def lagging_listing(launcher, clock, lag: float) -> dict[str, float]:
    """DescribeInstances (the launcher's real client, moto's real answer) leaves out instances
    launched less than ``lag`` seconds ago on ``clock``, as EC2's eventually consistent listing
    may. Returns instance id -> launch time, filled as RunInstances answers."""
    launched: dict[str, float] = {}

    def record(parsed, **_):
        for instance in parsed.get("Instances", []):
            launched[instance["InstanceId"]] = clock()

    def lag_behind(parsed, **_):
        for reservation in parsed.get("Reservations", []):
            reservation["Instances"] = [i for i in reservation["Instances"]
                                        if clock() - launched.get(i["InstanceId"], float("-inf")) >= lag]

    launcher.ec2.meta.events.register("after-call.ec2.RunInstances", record)
    launcher.ec2.meta.events.register("after-call.ec2.DescribeInstances", lag_behind)
    return launched


def test_just_launched_instance_not_listed_yet_still_counts(env, clock):
    """DescribeInstances may not list a new instance yet: it counts for TM_LIST_GRACE, is then
    terminated by id, and counts no more once EC2 took that request."""
    ec2 = env["ec2"]
    launcher = make_launcher(env, clock)
    lagging_listing(launcher, clock, lag=3600)
    (fresh,) = launcher.launch(1, [NODE_URL])
    assert launcher.running() == {fresh}
    clock.now += 60
    assert launcher.running() == {fresh} and fresh in alive_ids(ec2)
    clock.now += 1  # past TM_LIST_GRACE=60, never listed: terminated, not forgotten while it runs
    assert launcher.running() == set()
    assert instances(ec2, [fresh])[fresh]["State"]["Name"] in ("shutting-down", "terminated")


def test_once_listed_an_instance_missing_from_the_listing_is_gone(env, clock):
    ec2 = env["ec2"]
    launcher = make_launcher(env, clock)
    (listed,) = launcher.launch(1, [NODE_URL])
    clock.now += 30  # TM_DESCRIBE_TTL: listings are asked for at most this often
    assert launcher.running() == {listed}
    ec2.delete_tags(Resources=[listed], Tags=[{"Key": "tm-node"}])
    clock.now += 30
    assert launcher.running() == set()


def test_an_unlisted_instance_ec2_does_not_know_yet_keeps_counting(env, clock):
    """TerminateInstances may not know a just-launched id either: the instance counts until it does."""
    launcher = make_launcher(env, clock)
    lagging_listing(launcher, clock, lag=3600)
    (fresh,) = launcher.launch(1, [NODE_URL])
    unknown = []

    def not_known_yet(params, **_):
        if len(unknown) < 2:
            unknown.append(dict(params.get("body") or {}))
            return AWSResponse("https://ec2.amazonaws.com/", 400, {}, None), {
                "Error": {"Code": "InvalidInstanceID.NotFound", "Message": "not known (played by the test)"},
                "ResponseMetadata": {}}
        return None

    launcher.ec2.meta.events.register_first("before-call.ec2.TerminateInstances", not_known_yet)
    clock.now += 61
    assert launcher.running() == {fresh}  # the call and its one-by-one retry: both "not found"
    assert launcher.running() == set()  # the next run's request is taken
    assert fresh not in alive_ids(env["ec2"])


def test_a_lagging_listing_never_lets_more_instances_run_than_the_maximum(env, clock):
    """The listing lags 60 s, past TM_LIST_GRACE (10 s); booted workers never claim. Before, every
    unlisted instance was forgotten at the grace and replaced while it ran (15 alive against a
    maximum of 3 in 30 s). Now the most alive at once is the maximum."""
    env["environ"].update(TM_LIST_GRACE="10", TM_DESCRIBE_TTL="5")
    launcher = make_launcher(env, clock)
    launched = lagging_listing(launcher, clock, lag=60)
    state = Node.build(max_workers=3, monotonic=clock, wall=clock)
    scaler = Scaler(state, launcher, PeerClient(PEER_URL, "token", "node-1"), node_url=NODE_URL,
                    scale_wait=0.0, hash_rate=1000.0, boot_timeout=BOOT_TIMEOUT, monotonic=clock, wall=clock)
    backlog(state)
    most = 0
    for _ in range(90):  # 180 s of scaler runs
        scaler.tick()
        most = max(most, len(alive_ids(env["ec2"])))
        clock.now += 2
    print(f"listing lagging 60 s: most instances alive at once {most} (max 3), {len(launched)} launched in 180 s")
    assert len(launched) > 3  # the unlisted ones were terminated and replaced ...
    assert most == 3  # ... never while they could still run


def test_a_grace_shorter_than_the_listing_cache_is_refused(env):
    with pytest.raises(Ec2SettingsError, match="TM_LIST_GRACE=10 is shorter than TM_DESCRIBE_TTL=30"):
        Ec2WorkerSettings.from_environ({**env["environ"], "TM_LIST_GRACE": "10"})
    settings = Ec2WorkerSettings.from_environ({**env["environ"], "TM_LIST_GRACE": "30"})
    assert (settings.list_grace, settings.describe_ttl) == (30, 30)
    with pytest.raises(Ec2SettingsError, match="TM_LIST_GRACE"):
        Ec2WorkerSettings.from_environ({**env["environ"], "TM_LIST_GRACE": "soon"})


def test_a_node_with_contradictory_listing_settings_refuses_to_start(env, monkeypatch):
    from nodeapp import create_app

    for key, value in {**env["environ"], "TM_LIST_GRACE": "5", "TM_DESCRIBE_TTL": "30"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Ec2SettingsError, match="shorter than TM_DESCRIBE_TTL"):
        create_app({"cluster_token": "t", "launcher": "ec2", "node_name": "node-1"})


def test_terminate_skips_unknown_ids_and_stop_all_only_touches_own_workers(env, clock):
    ec2 = env["ec2"]
    mine = make_launcher(env, clock, "node-1")
    other = make_launcher(env, clock, "node-2")
    (a, b) = mine.launch(2, [NODE_URL])
    (c,) = other.launch(1, [NODE_URL])
    mine.terminate(["i-0123456789abcdef0", a])  # an id EC2 does not know does not stop the rest
    assert instances(ec2, [a])[a]["State"]["Name"] in ("shutting-down", "terminated")
    mine.stop_all()
    assert alive_ids(ec2) == {c}
    assert b not in alive_ids(ec2)


def test_missing_settings_are_named():
    with pytest.raises(Ec2SettingsError) as info:
        Ec2WorkerSettings.from_environ({"TM_CLUSTER": "demo"})
    message = str(info.value)
    for name in ("TM_WORKER_AMI", "TM_WORKER_SUBNETS", "TM_WORKER_SECURITY_GROUP", "TM_WORKER_INSTANCE_PROFILE",
                 "TM_WORKER_BUNDLE_URI", "TM_TOKEN_PARAMETER", "TM_REGION"):
        assert name in message
    assert "TM_CLUSTER" not in message


def test_registry_builds_the_ec2_launcher(env, monkeypatch):
    from provisioning.launchers import make_launcher as registry

    for key, value in env["environ"].items():
        monkeypatch.setenv(key, value)
    launcher = registry("ec2", token="t", idle_seconds=12, node_name="node-2")
    assert launcher.kind == "ec2" and launcher.idle_seconds == 12 and launcher.node_name == "node-2"
    assert launcher.running() == set()


def test_local_mode_never_imports_boto3():
    import subprocess
    import sys

    code = ("import sys, wsgi, run_program; run_program.build_parser().parse_args(['--local']); "
            "from provisioning.launchers import make_launcher; "
            "make_launcher('local', token='t', idle_seconds=1); "
            "loaded = [m for m in ('boto3', 'botocore') if m in sys.modules]; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
