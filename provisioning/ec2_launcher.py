"""Workers as EC2 instances (``LAUNCHER=ec2``), used by the node's scaler.

Every call here runs in the scaler tick: one short AWS request each (bounded connect/read
timeouts, few retries), never a waiter. ``launch`` returns as soon as RunInstances has accepted
the request; the scaler counts those instances as pending until their first claim.

RunInstances asks for what can be had (MinCount 1). Its errors are handled by kind: no capacity
in a zone -> the next subnet (TM_WORKER_SUBNETS), that zone rests for a while; the account's vCPU
limit -> no launch for QUOTA_PAUSE seconds, said in the scaler's decision and in ``status()``
(``/stats``); throttling -> back off, doubling; refused by IAM (``UnauthorizedOperation``, ...)
-> back off, doubling up to MAX_REFUSED_PAUSE; a reply lost to a timeout -> the next launch sends
the same request with the same ClientToken, so EC2 does not launch twice. ``running`` asks
DescribeInstances at most every TM_DESCRIBE_TTL seconds.

The invariant: an instance this launcher started counts (``running``) until EC2 lists it as gone
or EC2 has accepted our TerminateInstances for it. One that DescribeInstances has not listed
within TM_LIST_GRACE is terminated by id, and counts until that call succeeds.

Settings come from the environment, which the node's user-data writes (see docs/aws.md):

    TM_CLUSTER                  cluster name (the tm-cluster tag)            required
    TM_WORKER_AMI               AMI id for workers                           required
    TM_WORKER_INSTANCE_TYPE     e.g. t3.micro                                required
    TM_WORKER_SUBNETS           subnet ids workers launch into, comma-separated, the
                                node's own first (the others after a capacity error)  required
    TM_WORKER_SECURITY_GROUP    the workers' security group id               required
    TM_WORKER_INSTANCE_PROFILE  ARN of the worker instance profile           required
    TM_WORKER_BUNDLE_URI        s3://bucket/key of the workers' code bundle  required
    TM_TOKEN_PARAMETER          SSM parameter holding the worker token       required
    TM_REGION                   region (else AWS_DEFAULT_REGION)             required
    TM_WORKER_SPOT              1: launch workers as spot instances (default 0); when EC2
                                refuses spot capacity, that launch falls back to on-demand

TM_LIST_GRACE and TM_DESCRIBE_TTL are in the settings schema (tmcommon/settings.py, README).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError,
)

from provisioning.instances import ALIVE_STATES, cluster_instances, run_request
from provisioning.launchers import Launched
from provisioning.naming import TAG_CLUSTER, TAG_NODE, TAG_ROLE
from provisioning.userdata import Delivery, worker_script
from tmcommon.settings import SETTINGS, ConfigError

log = logging.getLogger(__name__)

#: Short timeouts and few retries: a scaler tick must not hang on AWS.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=8, retries={"max_attempts": 2, "mode": "standard"})
DEFAULT_LIST_GRACE = SETTINGS["list_grace"].default
DEFAULT_DESCRIBE_TTL = SETTINGS["describe_ttl"].default
#: RunInstances errors: no capacity in that zone (try the next subnet; the zone rests SUBNET_REST
#: seconds), the account's limit (no launch for QUOTA_PAUSE seconds), throttling (back off,
#: doubling from THROTTLE_PAUSE up to MAX_THROTTLE_PAUSE).
NO_CAPACITY = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported"})
ACCOUNT_LIMIT = frozenset({"VcpuLimitExceeded", "InstanceLimitExceeded"})
THROTTLED = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
SUBNET_REST, QUOTA_PAUSE, THROTTLE_PAUSE, MAX_THROTTLE_PAUSE = 300.0, 600.0, 5.0, 300.0
#: RunInstances refused for want of a permission (a policy, a boundary, an SCP, a key): retrying
#: will not help until someone changes IAM, so back off, doubling from REFUSED_PAUSE to MAX_REFUSED_PAUSE.
REFUSED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure",
                     "Blocked", "OptInRequired", "PendingVerification"})
REFUSED_PAUSE, MAX_REFUSED_PAUSE = 30.0, 960.0
#: How long an instance we terminated is kept out of the count although a (lagging) listing still
#: shows it running, at most; a listing that shows it shutting down or terminated ends it sooner.
GONE_KEPT = 3600.0
#: Errors after which RunInstances may have launched although no answer came back.
REPLY_LOST = (ReadTimeoutError, ConnectTimeoutError, EndpointConnectionError, ConnectionClosedError)
#: RunInstances errors that mean "no spot capacity for this request": launch on-demand instead.
SPOT_REFUSED = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded", "UnfulfillableCapacity",
})
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}

_REQUIRED = {
    "cluster": "TM_CLUSTER",
    "ami_id": "TM_WORKER_AMI",
    "instance_type": "TM_WORKER_INSTANCE_TYPE",
    "subnet_ids": "TM_WORKER_SUBNETS",
    "security_group_id": "TM_WORKER_SECURITY_GROUP",
    "profile_arn": "TM_WORKER_INSTANCE_PROFILE",
    "bundle_uri": "TM_WORKER_BUNDLE_URI",
    "token_parameter": "TM_TOKEN_PARAMETER",
}


class Ec2SettingsError(ValueError):
    """A TM_* variable the EC2 launcher needs is missing or invalid."""


@dataclass(frozen=True)
class Ec2WorkerSettings:
    cluster: str
    region: str
    ami_id: str
    instance_type: str
    subnet_ids: tuple[str, ...]
    security_group_id: str
    profile_arn: str
    bundle_uri: str
    token_parameter: str
    list_grace: float = DEFAULT_LIST_GRACE
    spot: bool = False
    describe_ttl: float = DEFAULT_DESCRIBE_TTL

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Ec2WorkerSettings:
        values = {field: environ.get(var, "").strip() for field, var in _REQUIRED.items()}
        missing = [_REQUIRED[field] for field, value in values.items() if not value]
        region = environ.get("TM_REGION", "").strip() or environ.get("AWS_DEFAULT_REGION", "").strip()
        if not region:
            missing.append("TM_REGION (or AWS_DEFAULT_REGION)")
        if missing:
            raise Ec2SettingsError(f"LAUNCHER=ec2 needs {', '.join(missing)} (set by the node's user-data)")
        grace, ttl = (_schema_value(environ, name) for name in ("list_grace", "describe_ttl"))
        if grace < ttl:
            raise Ec2SettingsError(
                f"TM_LIST_GRACE={grace:g} is shorter than TM_DESCRIBE_TTL={ttl:g}: an instance launched just "
                "after a listing would be taken for unlisted before the next listing; make TM_LIST_GRACE at "
                "least TM_DESCRIBE_TTL")
        spot = _FLAGS.get(environ.get("TM_WORKER_SPOT", "").strip().lower())
        if spot is None:
            raise Ec2SettingsError(f"TM_WORKER_SPOT={environ['TM_WORKER_SPOT']!r} is not 1 or 0")
        values["subnet_ids"] = tuple(s.strip() for s in values["subnet_ids"].split(",") if s.strip())
        return cls(region=region, list_grace=grace, spot=spot, describe_ttl=ttl, **values)

    @property
    def delivery(self) -> Delivery:
        return Delivery(self.region, self.bundle_uri, self.token_parameter)


def _schema_value(environ: Mapping[str, str], name: str) -> float:
    """A setting of the schema read from ``environ`` (its default when not set)."""
    setting = SETTINGS[name]
    raw = environ.get(setting.env, "").strip()
    try:
        return setting.parse(raw) if raw else setting.default
    except ConfigError as exc:
        raise Ec2SettingsError(str(exc)) from None


class Ec2Launcher:
    """Launch, list and terminate this node's worker instances.

    Instances carry ``tm-cluster``, ``tm-role=worker`` and ``tm-node=<node name>``; ``running``
    lists by those tags. The token is not passed here: workers read it from SSM themselves.
    """

    kind = "ec2"
    adopts_workers = True  # running() lists by tag: the scaler adopts what it does not know

    def __init__(
        self,
        ec2_client: Any,
        settings: Ec2WorkerSettings,
        *,
        idle_seconds: float,
        node_name: str,
        max_lifetime: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ec2 = ec2_client
        self.settings = settings
        self.idle_seconds = idle_seconds
        self.max_lifetime = max_lifetime  # WORKER_MAX_LIFETIME: the worker's own limit (its user-data)
        self.node_name = node_name
        self._clock = clock
        self._unlisted: dict[str, float] = {}  # launched, never listed yet: id -> launch time
        self._gone: dict[str, float] = {}  # EC2 took our TerminateInstances: id -> when (listings may lag)
        self._listed: dict[str, str] | None = None  # the last DescribeInstances: id -> state
        self._listed_at = 0.0
        self._lost: dict | None = None  # a RunInstances request whose answer a timeout lost
        self._resting: dict[str, float] = {}  # subnet -> until when it is tried last (no capacity)
        self._paused_until = 0.0
        self._pause_reason = ""
        self._throttled = 0  # throttling answers in a row
        self._refused = 0  # permission refusals in a row

    @classmethod
    def from_environment(cls, *, token: str = "", idle_seconds: float, node_name: str, max_lifetime: float = 0.0,
                         environ: Mapping[str, str] | None = None, session: Any = None) -> Ec2Launcher:
        """Build from TM_* variables. ``token`` is accepted for the registry's signature and unused."""
        settings = Ec2WorkerSettings.from_environ(os.environ if environ is None else environ)
        if session is None:
            import boto3

            session = boto3.session.Session(region_name=settings.region)
        return cls(session.client("ec2", region_name=settings.region, config=CLIENT_CONFIG), settings,
                   idle_seconds=idle_seconds, node_name=node_name, max_lifetime=max_lifetime)

    def tags(self) -> list[dict]:
        return [{"Key": TAG_CLUSTER, "Value": self.settings.cluster},
                {"Key": TAG_ROLE, "Value": "worker"},
                {"Key": TAG_NODE, "Value": self.node_name},
                {"Key": "Name", "Value": f"tm-{self.settings.cluster}-worker-{self.node_name}"}]

    def status(self) -> dict:
        """What holds launches back, for ``/stats`` and the dashboard."""
        now = self._clock()
        return {"paused_for": round(max(0.0, self._paused_until - now), 1),
                "paused_because": self._pause_reason if now < self._paused_until else None,
                "resting_subnets": sorted(s for s, until in self._resting.items() if until > now),
                "reply_lost": self._lost is not None}

    def launch(self, count: int, node_urls: list[str]) -> Launched:
        """RunInstances for up to ``count`` workers; returns the instance ids it got, with a note
        for the scaler's decision when something was in the way (see the module's docstring).

        With TM_WORKER_SPOT=1 the workers are spot instances; if EC2 refuses spot capacity
        (``SPOT_REFUSED``), the same launch is made on-demand and the result carries a note.
        """
        now = self._clock()
        if self._lost is not None:
            return self._registered(self._send(self._lost), "the last launch's answer was lost: asked again "
                                                            "with its ClientToken")
        if now < self._paused_until:
            return Launched([], f"launches paused for {self._paused_until - now:.0f}s more: {self._pause_reason}")
        refused = []
        for subnet in self._subnet_order(now):
            try:
                reply, note = self._launch_in(subnet, count, node_urls)
            except ClientError as err:
                code, message = err.response["Error"]["Code"], err.response["Error"].get("Message", "")
                if code in NO_CAPACITY:
                    self._resting[subnet] = now + SUBNET_REST
                    refused.append(f"{code} in {subnet}")
                    continue
                if code in ACCOUNT_LIMIT:
                    return self._pause(now, QUOTA_PAUSE, f"{code}: {message} (the account's vCPU quota for this "
                                                         "instance family; raise it in Service Quotas)")
                if code in THROTTLED:
                    self._throttled += 1
                    wait = min(MAX_THROTTLE_PAUSE, THROTTLE_PAUSE * 2 ** (self._throttled - 1))
                    return self._pause(now, wait, f"{code}: EC2 throttles this account's calls; backing off")
                if code in REFUSED:
                    self._refused += 1
                    wait = min(MAX_REFUSED_PAUSE, REFUSED_PAUSE * 2 ** (self._refused - 1))
                    return self._pause(now, wait, f"{code}: RunInstances was refused {self._refused} time(s) in a "
                                                  f"row: {message[:300]} (the node role, its permissions boundary "
                                                  "or an organisation policy; see docs/aws.md)")
                raise
            self._throttled = self._refused = 0
            return self._registered(reply, "; ".join([*refused, *([f"launched in {subnet}"] if refused else []),
                                                      *([note] if note else [])]))
        note = f"no capacity in any subnet ({', '.join(refused)}); trying again later"
        log.warning("%s", note)
        return Launched([], note)

    def _subnet_order(self, now: float) -> list[str]:
        """The node's own subnet first, then the others; those that lately had no capacity last."""
        subnets = list(self.settings.subnet_ids)
        return sorted(subnets, key=lambda s: (self._resting.get(s, 0.0) > now, subnets.index(s)))

    def _pause(self, now: float, seconds: float, reason: str) -> Launched:
        self._paused_until, self._pause_reason = now + seconds, reason
        note = f"launches paused for {seconds:.0f}s: {reason}"
        log.error("%s", note)
        return Launched([], note)

    def _launch_in(self, subnet: str, count: int, node_urls: list[str]) -> tuple[dict, str]:
        """One launch into ``subnet``; spot refused for capacity falls back to on-demand there."""
        try:
            return self._send(self._request(subnet, count, node_urls, spot=self.settings.spot)), ""
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if not (self.settings.spot and code in SPOT_REFUSED):
                raise
            note = f"spot refused ({code}): {count} worker(s) launched on-demand"
            log.warning("%s; %s", note, err.response["Error"].get("Message", ""))
            return self._send(self._request(subnet, count, node_urls, spot=False)), note

    def _registered(self, reply: dict, note: str) -> Launched:
        ids = [i["InstanceId"] for i in reply["Instances"]]
        now = self._clock()
        for instance_id in ids:
            self._unlisted[instance_id] = now
        return Launched(ids, note)

    def _request(self, subnet: str, count: int, node_urls: list[str], *, spot: bool) -> dict:
        s = self.settings
        request = run_request(
            ami_id=s.ami_id, instance_type=s.instance_type, subnet_id=subnet,
            security_group_id=s.security_group_id, profile_arn=s.profile_arn,
            user_data=worker_script(s.delivery, node_urls, self.idle_seconds, spot=spot,
                                    max_lifetime=self.max_lifetime),
            tags=self.tags(), count=count, terminate_on_shutdown=True, spot=spot)
        # botocore retries a timed-out call, and a lost answer is asked again (``_lost``): the
        # same token makes EC2 answer with the instances it launched instead of launching more
        request["ClientToken"] = uuid.uuid4().hex
        return request

    def _send(self, request: dict) -> dict:
        spot = "InstanceMarketOptions" in request
        try:
            reply = self.ec2.run_instances(**request)
        except REPLY_LOST as err:
            self._lost = request
            log.error("RunInstances got no answer (%s): the next launch asks again with the same ClientToken", err)
            raise
        except ClientError as err:
            self._lost = None
            log.log(logging.INFO if spot and err.response["Error"]["Code"] in SPOT_REFUSED else logging.ERROR,
                    "RunInstances for %d %sworker(s) failed: %s %s", request["MaxCount"], "spot " if spot else "",
                    err.response["Error"]["Code"], err.response["Error"].get("Message", ""))
            raise
        self._lost = None
        return reply

    def room(self) -> None:
        """EC2 says what it cannot launch when asked (capacity, vCPU limit): no limit known ahead."""
        return None

    def limit(self) -> None:
        """No limit known ahead (see ``room``)."""
        return None

    def running(self) -> set[str] | None:
        """Worker instances of this node that may be running; None if AWS cannot say.

        DescribeInstances is asked at most every TM_DESCRIBE_TTL seconds. It is eventually
        consistent: an instance launched a moment ago may not be listed yet. Such an instance
        counts as running until it is listed once; if TM_LIST_GRACE seconds pass without that, it
        is terminated by id and counts until EC2 accepts that request. One EC2 accepted our
        TerminateInstances for does not count, even if a lagging listing still shows it.
        """
        now = self._clock()
        if self._listed is None or now - self._listed_at >= self.settings.describe_ttl:
            try:
                instances = cluster_instances(
                    self.ec2, self.settings.cluster, role="worker",
                    states=("pending", "running", "stopping", "stopped", "shutting-down", "terminated"),
                    extra_filters=[{"Name": f"tag:{TAG_NODE}", "Values": [self.node_name]}])
            except (ClientError, BotoCoreError) as err:
                log.warning("DescribeInstances failed, worker list unknown this run: %s", err)
                return None
            self._listed = {i["InstanceId"]: i["State"]["Name"] for i in instances}
            self._listed_at = now
            for instance_id, state in self._listed.items():
                self._unlisted.pop(instance_id, None)
                if state not in ALIVE_STATES:
                    self._gone.pop(instance_id, None)  # EC2 says so itself now
        for instance_id, when in list(self._gone.items()):
            if now - when > GONE_KEPT:
                del self._gone[instance_id]
        alive = {i for i, state in self._listed.items() if state in ALIVE_STATES and i not in self._gone}
        overdue = [i for i, launched in self._unlisted.items() if now - launched > self.settings.list_grace]
        alive |= set(self._unlisted) - self._terminate_unlisted(overdue)
        return alive

    def _terminate_unlisted(self, ids: list[str]) -> set[str]:
        """Terminate by id the instances DescribeInstances has not listed within TM_LIST_GRACE
        (they may well be running); returns those EC2 accepted. The others keep counting."""
        if not ids:
            return set()
        log.warning("worker(s) %s not listed by DescribeInstances within TM_LIST_GRACE=%gs: terminating them by id "
                    "(they count against the quota until EC2 accepts)", ", ".join(ids), self.settings.list_grace)
        try:
            accepted = self.terminate(ids)
        except (ClientError, BotoCoreError) as err:
            log.warning("could not terminate unlisted worker(s) %s, they still count: %s", ", ".join(ids), err)
            return set()
        now = self._clock()
        for instance_id in set(ids) - accepted:  # EC2 does not know the id: not yet, or no longer
            if now - self._unlisted[instance_id] > GONE_KEPT:  # long after any lag: it runs nowhere
                del self._unlisted[instance_id]
                log.error("worker %s: EC2 has not known this id for %gs since its launch; it no longer counts",
                          instance_id, GONE_KEPT)
                accepted.add(instance_id)
        return accepted

    def terminate(self, worker_ids: Iterable[str]) -> set[str]:
        """TerminateInstances, without waiting; returns the ids EC2 accepted. Unknown ids are
        skipped, not fatal (one EC2 does not know *yet*, launched a moment ago, still counts)."""
        ids = list(dict.fromkeys(worker_ids))
        if not ids:
            return set()
        try:
            self.ec2.terminate_instances(InstanceIds=ids)
            accepted = set(ids)
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                raise
            accepted = set()
            for instance_id in ids:  # one bad id fails the whole call: retry one by one
                try:
                    self.ec2.terminate_instances(InstanceIds=[instance_id])
                    accepted.add(instance_id)
                except ClientError as one_err:
                    log.info("not terminating %s: %s", instance_id, one_err.response["Error"]["Code"])
        now = self._clock()
        for instance_id in accepted:
            self._unlisted.pop(instance_id, None)
            self._gone[instance_id] = now
        return accepted

    def stop_all(self) -> None:
        """Terminate every worker of this node (one call, no waiting): the explicit stop
        (``python -m provisioning.ec2_launcher --stop-workers``). A node that merely stops or
        restarts does not call it: the next start adopts the workers (nodeapp.background).
        Tasks they hold go back to their queues when their leases expire.
        """
        self._listed = None  # a fresh listing: the last one may be TM_DESCRIBE_TTL old
        alive = self.running()
        ids = alive if alive is not None else set(self._unlisted)
        try:
            self.terminate(sorted(ids))
        except (ClientError, BotoCoreError) as err:
            log.error("could not terminate worker instances %s on stop: %s", sorted(ids), err)
        else:
            if ids:
                log.info("terminated %d worker instance(s) on stop", len(ids))


def main(argv: list[str] | None = None) -> int:
    """``python -m provisioning.ec2_launcher --stop-workers``: terminate this node's workers, with
    the node's own settings (its environment: TM_*, NODE_NAME) and instance role. On a node:
    ``sudo systemctl stop tm-node`` first, then this with /etc/tm/node.env (docs/aws.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m provisioning.ec2_launcher", description=main.__doc__)
    parser.add_argument("--stop-workers", action="store_true", required=True,
                        help="terminate every worker instance tagged for this node (NODE_NAME)")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    node_name = os.environ.get(SETTINGS["node_name"].env, "").strip()
    if not node_name:
        parser.error("NODE_NAME is not set: run with the node's environment (/etc/tm/node.env)")
    try:
        launcher = Ec2Launcher.from_environment(idle_seconds=0, node_name=node_name)
    except Ec2SettingsError as exc:
        parser.error(str(exc))
    launcher.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
