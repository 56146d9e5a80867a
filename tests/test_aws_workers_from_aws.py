"""Workers counted from AWS, under moto: a restarted node adopts its running workers against its
quota; silent and too-old workers are terminated; RunInstances asks for what can be had, goes to
another zone when one has no capacity, pauses on the account's vCPU limit (said in the decision
and in /stats), backs off when throttled, re-asks a lost answer with its ClientToken; and
DescribeInstances is not asked on every scaler run.

EC2's refusals are played by a ``before-call`` hook on the launcher's real client (the way moto
itself answers), and a lost answer by an ``after-call`` hook that raises a read timeout once moto
has launched the instances.
"""

from __future__ import annotations

import dataclasses

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from nodeapp import create_app
from nodeapp.node import Node
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from provisioning.network import NetworkWrapper
from tests.aws_helpers import aws, service_models  # noqa: F401
from tests.test_aws_launcher import NODE_URL, PEER_URL, alive_ids, backlog, clock, env, make_launcher  # noqa: F401

BOOT_TIMEOUT = 300.0


def scaler_for(launcher, clock, max_workers=3, **kwargs):
    state = Node.build(max_workers=max_workers, lease_seconds=60, monotonic=clock, wall=clock)
    scaler = Scaler(state, launcher, PeerClient("", "token", "node-1"), node_url=NODE_URL, scale_wait=0.0,
                    hash_rate=1000.0, boot_timeout=BOOT_TIMEOUT, monotonic=clock, wall=clock, **kwargs)
    return state, scaler


def refuse(launcher, code: str, when=lambda params: True) -> list[dict]:
    """EC2 answers RunInstances with ``code`` whenever ``when(params)``; returns the calls seen."""
    calls = []

    def answer(params, model, **_):
        request = dict(params.get("body") or {})
        calls.append(request)
        if when(request):
            return AWSResponse("https://ec2.amazonaws.com/", 400, {}, None), {
                "Error": {"Code": code, "Message": f"{code} (played by the test)"}, "ResponseMetadata": {}}
        return None

    launcher.ec2.meta.events.register_first("before-call.ec2.RunInstances", answer)
    return calls


def describe_calls(launcher) -> list[int]:
    calls = []
    launcher.ec2.meta.events.register("before-call.ec2.DescribeInstances", lambda **_: calls.append(1))
    return calls


def two_workers_of_a_node_that_then_restarts(env, clock) -> set[str]:
    """A node launches two workers; the caller then builds the restarted node (a new registry,
    the same workers still running on EC2)."""
    state, scaler = scaler_for(make_launcher(env, clock), clock)
    backlog(state, count=2)
    scaler.tick()
    launched = alive_ids(env["ec2"])
    assert len(launched) == 2
    return launched


def test_a_restarted_node_adopts_its_running_workers_against_the_quota(env, clock):  # noqa: F811
    launched = two_workers_of_a_node_that_then_restarts(env, clock)
    state, scaler = scaler_for(make_launcher(env, clock), clock)
    backlog(state, count=20)
    scaler.tick()
    workers = {w.id: w for w in state.workers.workers()}
    assert launched <= set(workers) and len(workers) == 3  # adopted, and only one more launched
    assert all(workers[i].state == "pending" and not workers[i].borrowed for i in launched)
    state.workers.seen(sorted(launched)[0])  # an adopted worker that calls is live
    assert state.scaling_figures().live == 1


def test_workers_beyond_the_quota_are_stopped_when_adopted(env, clock):  # noqa: F811
    launched = two_workers_of_a_node_that_then_restarts(env, clock)
    state, scaler = scaler_for(make_launcher(env, clock), clock, max_workers=1)
    scaler.tick()  # adopts one, hands the other out to be stopped
    scaler.tick()  # ... which the terminate step does
    assert len(state.workers.workers()) == 1
    assert len(alive_ids(env["ec2"]) & launched) == 1


def test_silent_and_too_old_workers_are_terminated_and_their_tasks_requeued(env, clock):  # noqa: F811
    launcher = make_launcher(env, clock)
    state, scaler = scaler_for(launcher, clock, silence_seconds=90, max_lifetime=3600)
    backlog(state, count=2)
    scaler.tick()
    hung, busy = sorted(alive_ids(env["ec2"]))
    state.claim(hung, 1)
    state.claim(busy, 1)
    for _ in range(10):  # 100 s: the busy one keeps calling, the hung one does not
        clock.now += 10
        state.workers.seen(busy)
        scaler.tick()
    assert hung not in alive_ids(env["ec2"]) and busy in alive_ids(env["ec2"])
    assert hung not in {w.id for w in state.workers.workers()}
    clock.now += 3600  # the busy one reaches WORKER_MAX_LIFETIME
    state.workers.seen(busy)
    scaler.tick()
    assert busy not in alive_ids(env["ec2"])


def test_no_capacity_in_one_zone_launches_in_the_next(env, clock):  # noqa: F811
    net = NetworkWrapper(env["ec2"])
    first, second = net.default_subnets(net.default_vpc())[:2]
    env["environ"]["TM_WORKER_SUBNETS"] = f"{first},{second}"
    launcher = make_launcher(env, clock)
    calls = refuse(launcher, "InsufficientInstanceCapacity", when=lambda params: params.get("SubnetId") == first)
    state, scaler = scaler_for(launcher, clock, max_workers=2)
    backlog(state, count=1)
    scaler.tick()
    (worker,) = alive_ids(env["ec2"])
    instance = env["ec2"].describe_instances(InstanceIds=[worker])["Reservations"][0]["Instances"][0]
    assert instance["SubnetId"] == second
    assert [c["SubnetId"] for c in calls] == [first, second]
    (decision,) = scaler.decisions()
    assert decision["notes"] == [f"InsufficientInstanceCapacity in {first}; launched in {second}"]
    assert launcher.status()["resting_subnets"] == [first]
    launcher.launch(1, [NODE_URL])  # while the first zone rests, the second is tried first
    assert calls[-1]["SubnetId"] == second


def test_the_vcpu_limit_pauses_launches_and_says_so(env, clock):  # noqa: F811
    launcher = make_launcher(env, clock)
    calls = refuse(launcher, "VcpuLimitExceeded")
    app = create_app({"cluster_token": "t", "node_name": "node-1", "node_url": NODE_URL, "scale_wait": 0.0,
                      "max_workers": 3}, launcher=launcher)
    context = app.extensions["nodeapp"]
    context.scaler._monotonic = context.scaler._wall = clock
    backlog(context.node, count=5)
    for _ in range(3):
        context.scaler.tick()
    assert len(calls) == 1  # asked once, then no more while paused
    (decision,) = context.scaler.decisions()
    assert decision["launched"] == 0 and "VcpuLimitExceeded" in decision["notes"][0]
    launches = app.test_client().get("/stats").get_json()["scaler"]["launches"]
    assert launches["paused_for"] == 600 and "VcpuLimitExceeded" in launches["paused_because"]
    clock.now += 601
    context.scaler.tick()
    assert len(calls) == 2


@pytest.mark.parametrize("code, expected", [
    ("RequestLimitExceeded", [5, 10, 20]),  # throttling
    ("UnauthorizedOperation", [30, 60, 120, 240, 480, 960, 960, 960]),  # IAM: no retry heals it; >= 10 min
])
def test_throttling_and_iam_refusals_back_off_doubling(env, clock, code, expected):  # noqa: F811
    launcher = make_launcher(env, clock)
    calls = refuse(launcher, code)
    pauses = []
    for _ in expected:
        note = launcher.launch(1, [NODE_URL]).note
        assert code in note
        assert launcher.launch(1, [NODE_URL]) == []  # held back: no call while paused
        pauses.append(launcher.status()["paused_for"])
        clock.now += pauses[-1]
    assert pauses == expected and len(calls) == len(expected)


def test_a_lost_answer_is_asked_again_with_the_same_client_token(env, clock):  # noqa: F811
    launcher = make_launcher(env, clock)
    sent = []
    launcher.ec2.meta.events.register("provide-client-params.ec2.RunInstances",
                                      lambda params, **_: sent.append(dict(params)))
    lost = []

    def lose_the_first_answer(**_):
        if not lost:
            lost.append(1)
            raise ReadTimeoutError(endpoint_url="https://ec2.amazonaws.com/")

    launcher.ec2.meta.events.register("after-call.ec2.RunInstances", lose_the_first_answer)
    state, scaler = scaler_for(launcher, clock, max_workers=2)
    backlog(state, count=2)
    scaler.tick()  # RunInstances launched, its answer lost: nothing registered yet
    assert state.workers.workers() == [] and launcher.status()["reply_lost"]
    scaler.tick()  # the same request again, same ClientToken (EC2 answers with what it launched)
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0]["ClientToken"]
    assert not launcher.status()["reply_lost"]
    # moto ignores the token and launched twice: the reconcile adopts or stops the extra ones
    launcher.settings = dataclasses.replace(launcher.settings, describe_ttl=0.0)
    scaler.tick()
    scaler.tick()
    assert len(state.workers.workers()) == 2 and len(alive_ids(env["ec2"])) == 2


def test_describe_instances_is_not_asked_on_every_run(env, clock):  # noqa: F811
    launcher = make_launcher(env, clock)
    state, scaler = scaler_for(launcher, clock)
    calls = describe_calls(launcher)
    for _ in range(10):  # 20 s of scaler runs, nothing changes
        scaler.tick()
        clock.now += 2
    assert len(calls) == 1
    clock.now += 30
    scaler.tick()
    assert len(calls) == 2


@pytest.mark.parametrize("variable", ["TM_DESCRIBE_TTL"])
def test_bad_describe_ttl_is_refused(env, variable):  # noqa: F811
    from provisioning.ec2_launcher import Ec2SettingsError, Ec2WorkerSettings

    with pytest.raises(Ec2SettingsError, match=variable):
        Ec2WorkerSettings.from_environ({**env["environ"], variable: "soon"})


def launches_with_boots_that_never_claim(env, clock, seconds: float, boot_timeout: float = 4.0):  # noqa: F811
    """A node (max 3) with work waiting whose workers never claim; scaler runs every 2 s for
    ``seconds``. Returns the node's app and every instance RunInstances started."""
    launcher = make_launcher(env, clock)
    launched = []
    launcher.ec2.meta.events.register(
        "after-call.ec2.RunInstances", lambda parsed, **_: launched.extend(i["InstanceId"] for i in parsed["Instances"]))
    app = create_app({"cluster_token": "t", "node_name": "node-1", "node_url": NODE_URL, "scale_wait": 0.0,
                      "max_workers": 3, "boot_timeout": boot_timeout}, launcher=launcher)
    scaler = app.extensions["nodeapp"].scaler
    scaler._monotonic = scaler._wall = scaler.boot_backoff._monotonic = clock
    app.extensions["nodeapp"].node.workers._monotonic = clock
    backlog(app.extensions["nodeapp"].node, count=20)
    end = clock.now + seconds
    while clock.now < end:
        scaler.tick()
        clock.now += 2
    return app, launched


def test_boots_that_always_fail_back_off_doubling_to_a_ceiling(env, clock):  # noqa: F811
    """BOOT_TIMEOUT=4 s, max 3, workers that never claim: before, 57 launches in 90 s (about 2,300
    an hour). Now each run with failed boots doubles the hold on launches, up to 16 minutes."""
    app, launched = launches_with_boots_that_never_claim(env, clock, 3600)
    per_hour = len(launched)
    stats = app.test_client().get("/stats").get_json()["scaler"]
    backoff = stats["boot_backoff"]
    print(f"\nboots that always fail (BOOT_TIMEOUT=4, max 3): {per_hour} launches in an hour")
    assert per_hour <= 3 * 9  # 30 + 60 + ... + 960 s of holds: 8 or 9 rounds of 3 in the first hour
    assert backoff["failures_in_a_row"] == per_hour - len(alive_ids(env["ec2"]))
    assert 0 < backoff["held_for"] <= 960 and "never made a first claim" in backoff["last_failure"]
    held = [d for d in stats["decisions"] if "launches held" in d["reason"]]
    assert held and "boot failure(s) in a row" in held[0]["reason"] and "doubling up to 960s" in held[0]["reason"]


def test_a_first_claim_ends_the_hold_on_launches(env, clock):  # noqa: F811
    app, launched = launches_with_boots_that_never_claim(env, clock, 8)  # 3 launched, failed at BOOT_TIMEOUT
    context = app.extensions["nodeapp"]
    assert len(launched) == 3 and 28 <= context.scaler.boot_backoff.held_for() <= 30
    while len(launched) == 3:  # held for 30 s, then the next 3
        context.scaler.tick()
        clock.now += 2
    assert clock.now - 1_000_000.0 >= 30
    context.node.claim(launched[3], 1)  # a first claim: boots work again
    context.scaler.tick()
    assert context.scaler.boot_backoff.status() == {"failures_in_a_row": 0, "held_for": 0.0, "last_failure": None}
    clock.now += 4.5  # the two others fail at BOOT_TIMEOUT: a new streak starts from 30 s, not 60
    context.scaler.tick()
    assert context.scaler.boot_backoff.status()["failures_in_a_row"] == 2
    assert 28 <= context.scaler.boot_backoff.held_for() <= 30
