"""Workers as EC2 instances (``LAUNCHER=ec2``), used by the node's scaler.

Every call here runs in the scaler tick: one short AWS request each (bounded connect/read
timeouts, few retries), never a waiter. ``launch`` returns as soon as RunInstances has accepted
the request; the scaler counts those instances as pending until their first claim.

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
    TM_LIST_GRACE               seconds a just-launched instance counts as running
                                although DescribeInstances does not list it yet (default 120)
    TM_WORKER_SPOT              1: launch workers as spot instances (default 0); when EC2
                                refuses spot capacity, that launch falls back to on-demand
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
from botocore.exceptions import BotoCoreError, ClientError

from provisioning.instances import ALIVE_STATES, cluster_instances, run_request
from provisioning.launchers import Launched
from provisioning.naming import TAG_CLUSTER, TAG_NODE, TAG_ROLE
from provisioning.userdata import Delivery, worker_script

log = logging.getLogger(__name__)

#: Short timeouts and few retries: a scaler tick must not hang on AWS.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=8, retries={"max_attempts": 2, "mode": "standard"})
DEFAULT_LIST_GRACE = 120.0
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

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Ec2WorkerSettings:
        values = {field: environ.get(var, "").strip() for field, var in _REQUIRED.items()}
        missing = [_REQUIRED[field] for field, value in values.items() if not value]
        region = environ.get("TM_REGION", "").strip() or environ.get("AWS_DEFAULT_REGION", "").strip()
        if not region:
            missing.append("TM_REGION (or AWS_DEFAULT_REGION)")
        if missing:
            raise Ec2SettingsError(f"LAUNCHER=ec2 needs {', '.join(missing)} (set by the node's user-data)")
        try:
            grace = float(environ.get("TM_LIST_GRACE", "") or DEFAULT_LIST_GRACE)
        except ValueError:
            raise Ec2SettingsError(f"TM_LIST_GRACE={environ['TM_LIST_GRACE']!r} is not a number") from None
        spot = _FLAGS.get(environ.get("TM_WORKER_SPOT", "").strip().lower())
        if spot is None:
            raise Ec2SettingsError(f"TM_WORKER_SPOT={environ['TM_WORKER_SPOT']!r} is not 1 or 0")
        values["subnet_ids"] = tuple(s.strip() for s in values["subnet_ids"].split(",") if s.strip())
        return cls(region=region, list_grace=grace, spot=spot, **values)

    @property
    def delivery(self) -> Delivery:
        return Delivery(self.region, self.bundle_uri, self.token_parameter)


class Ec2Launcher:
    """Launch, list and terminate this node's worker instances.

    Instances carry ``tm-cluster``, ``tm-role=worker`` and ``tm-node=<node name>``; ``running``
    lists by those tags. The token is not passed here: workers read it from SSM themselves.
    """

    kind = "ec2"

    def __init__(
        self,
        ec2_client: Any,
        settings: Ec2WorkerSettings,
        *,
        idle_seconds: float,
        node_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ec2 = ec2_client
        self.settings = settings
        self.idle_seconds = idle_seconds
        self.node_name = node_name
        self._clock = clock
        self._unlisted: dict[str, float] = {}  # launched, never listed yet: id -> launch time

    @classmethod
    def from_environment(cls, *, token: str = "", idle_seconds: float, node_name: str,
                         environ: Mapping[str, str] | None = None, session: Any = None) -> Ec2Launcher:
        """Build from TM_* variables. ``token`` is accepted for the registry's signature and unused."""
        settings = Ec2WorkerSettings.from_environ(os.environ if environ is None else environ)
        if session is None:
            import boto3

            session = boto3.session.Session(region_name=settings.region)
        return cls(session.client("ec2", region_name=settings.region, config=CLIENT_CONFIG), settings,
                   idle_seconds=idle_seconds, node_name=node_name)

    def tags(self) -> list[dict]:
        return [{"Key": TAG_CLUSTER, "Value": self.settings.cluster},
                {"Key": TAG_ROLE, "Value": "worker"},
                {"Key": TAG_NODE, "Value": self.node_name},
                {"Key": "Name", "Value": f"tm-{self.settings.cluster}-worker-{self.node_name}"}]

    def launch(self, count: int, node_urls: list[str]) -> Launched:
        """One RunInstances call for ``count`` workers; returns the instance ids it got.

        With TM_WORKER_SPOT=1 the workers are spot instances; if EC2 refuses spot capacity
        (``SPOT_REFUSED``), the same launch is made on-demand and the result carries a note.
        """
        note = ""
        try:
            reply = self._run(count, node_urls, spot=self.settings.spot)
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if not (self.settings.spot and code in SPOT_REFUSED):
                raise
            note = f"spot refused ({code}): {count} worker(s) launched on-demand"
            log.warning("%s; %s", note, err.response["Error"].get("Message", ""))
            reply = self._run(count, node_urls, spot=False)
        ids = [i["InstanceId"] for i in reply["Instances"]]
        now = self._clock()
        for instance_id in ids:
            self._unlisted[instance_id] = now
        if len(ids) < count:
            log.warning("asked for %d worker instance(s), EC2 gave %d", count, len(ids))
        return Launched(ids, note)

    def _run(self, count: int, node_urls: list[str], *, spot: bool) -> dict:
        s = self.settings
        request = run_request(
            ami_id=s.ami_id, instance_type=s.instance_type, subnet_id=s.subnet_ids[0],
            security_group_id=s.security_group_id, profile_arn=s.profile_arn,
            user_data=worker_script(s.delivery, node_urls, self.idle_seconds, spot=spot),
            tags=self.tags(), count=count, terminate_on_shutdown=True, spot=spot)
        # botocore retries a timed-out call; the same token makes EC2 launch only once
        request["ClientToken"] = uuid.uuid4().hex
        try:
            return self.ec2.run_instances(**request)
        except ClientError as err:
            log.log(logging.INFO if spot and err.response["Error"]["Code"] in SPOT_REFUSED else logging.ERROR,
                    "RunInstances for %d %sworker(s) failed: %s %s", count, "spot " if spot else "",
                    err.response["Error"]["Code"], err.response["Error"].get("Message", ""))
            raise

    def running(self) -> set[str] | None:
        """Worker instances of this node that are pending or running; None if AWS cannot say.

        DescribeInstances is eventually consistent: an instance launched a moment ago may not
        be listed yet. Such an instance counts as running until it is listed once, or until
        TM_LIST_GRACE seconds have passed without it ever being listed.
        """
        try:
            instances = cluster_instances(
                self.ec2, self.settings.cluster, role="worker",
                states=("pending", "running", "stopping", "stopped", "shutting-down", "terminated"),
                extra_filters=[{"Name": f"tag:{TAG_NODE}", "Values": [self.node_name]}])
        except (ClientError, BotoCoreError) as err:
            log.warning("DescribeInstances failed, worker list unknown this run: %s", err)
            return None
        alive = set()
        for instance in instances:
            self._unlisted.pop(instance["InstanceId"], None)
            if instance["State"]["Name"] in ALIVE_STATES:
                alive.add(instance["InstanceId"])
        now = self._clock()
        for instance_id, launched in list(self._unlisted.items()):
            if now - launched <= self.settings.list_grace:
                alive.add(instance_id)
            else:
                del self._unlisted[instance_id]
                log.warning("worker %s was never listed by DescribeInstances; forgetting it", instance_id)
        return alive

    def terminate(self, worker_ids: Iterable[str]) -> None:
        """TerminateInstances, without waiting. Unknown ids are skipped, not fatal."""
        ids = list(dict.fromkeys(worker_ids))
        if not ids:
            return
        for instance_id in ids:
            self._unlisted.pop(instance_id, None)
        try:
            self.ec2.terminate_instances(InstanceIds=ids)
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                raise
            for instance_id in ids:  # one bad id fails the whole call: retry one by one
                try:
                    self.ec2.terminate_instances(InstanceIds=[instance_id])
                except ClientError as one_err:
                    log.info("not terminating %s: %s", instance_id, one_err.response["Error"]["Code"])

    def stop_all(self) -> None:
        """The node is stopping: terminate every worker it launched (one call, no waiting).

        Its queue dies with the node process, and a restarted node would not know these
        workers, so they would run outside any maximum; terminating them bounds the cost.
        Tasks they hold for the peer node go back to the peer's queue when their leases expire.
        """
        alive = self.running()
        ids = alive if alive is not None else set(self._unlisted)
        try:
            self.terminate(sorted(ids))
        except (ClientError, BotoCoreError) as err:
            log.error("could not terminate worker instances %s on stop: %s", sorted(ids), err)
        else:
            if ids:
                log.info("terminated %d worker instance(s) on stop", len(ids))
