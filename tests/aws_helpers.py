"""Fixtures and helpers for the AWS tests: moto's mock_aws with fake credentials, loopback nodes.

Import the fixtures into a test module with ``from tests.aws_helpers import aws  # noqa: F401``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from tests.helpers import once_per_run, shared_dir

REGION = "us-east-1"


FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def service_models():
    """One boto3 Session for all AWS tests: it caches the (large) service models it loads.

    It holds no client; every test makes its clients inside its own ``mock_aws``. (Sharing a
    botocore session between several boto3 Sessions breaks S3 clients, so the boto3 Session
    itself is what is shared.)
    """
    import boto3
    import moto  # noqa: F401  (registers its request hook, which sessions pick up when created)

    return boto3.session.Session(region_name=REGION, aws_access_key_id="testing",
                                 aws_secret_access_key="testing", aws_session_token="testing")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, wheelhouse):
    """The code AWS mode delivers (``provisioning.artifacts``), built once per test run for every
    xdist worker: pip builds the wheel of this checkout and downloads the x86_64 bundles' wheels,
    both from the ``wheelhouse`` made of this venv (``PIP_FIND_LINKS``, no index), not from PyPI."""
    from provisioning.artifacts import ROLES, Artifacts

    def build() -> Artifacts:
        made = Artifacts(shared_dir(tmp_path_factory) / "artifacts")
        for role in ROLES:  # what the tests ask for, made now: the workers share these files
            made.bundle(role, "x86_64")
        return made

    return once_per_run(shared_dir(tmp_path_factory) / "artifacts.pickle", build)


@pytest.fixture
def aws(monkeypatch, service_models) -> Iterator[object]:
    """A boto3 Session inside ``mock_aws``; clients are created inside the mock, never at import.

    moto takes a bucket policy's ``Deny`` for unconditional (it does not evaluate
    ``aws:SecureTransport``), so the TLS-only policy of the cluster bucket would refuse the test's
    own (TLS) requests: ``PutBucketPolicy`` is answered here, as S3 does, and the policy kept in
    ``session.bucket_policies`` (bucket -> document) for the tests to read.
    """
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    from moto import mock_aws

    policies: dict[str, dict] = {}

    def keep_policy(params, context, **_):
        from botocore.awsrequest import AWSResponse

        policies[context["tm_bucket"]] = json.loads(params["body"])
        return AWSResponse("https://s3.amazonaws.com/", 204, {}, None), {"ResponseMetadata": {}}

    def name_bucket(params, context, **_):
        context["tm_bucket"] = params["Bucket"]

    hooks = [("before-parameter-build.s3.PutBucketPolicy", name_bucket), ("before-call.s3.PutBucketPolicy", keep_policy)]
    service_models.bucket_policies = policies
    for event, hook in hooks:
        service_models.events.register_first(event, hook, unique_id=f"tm-{event}")
    try:
        with mock_aws():
            yield service_models
    finally:
        for event, _ in hooks:
            service_models.events.unregister(event, unique_id=f"tm-{event}")


def worker_launch_setting(ec2, iam, ssm, account: str) -> dict[str, str]:
    """What provisioning would have made for a node's worker launches (a security group, the
    worker role and instance profile), as the TM_* variables a node's user-data sets."""
    from provisioning.iam import IamWrapper
    from provisioning.instances import architecture, latest_ami
    from provisioning.naming import ClusterNames
    from provisioning.network import NetworkWrapper

    names = ClusterNames("demo", account, REGION)
    net = NetworkWrapper(ec2)
    vpc = net.default_vpc()
    iam_wrapper = IamWrapper(iam)
    iam_wrapper.create_role(names.role("worker"), names.iam_path, {"Version": "2012-10-17", "Statement": []},
                            names.tags())
    return {"TM_CLUSTER": "demo", "TM_REGION": REGION, "TM_WORKER_AMI": latest_ami(ssm, architecture(ec2, "t3.micro")),
            "TM_WORKER_INSTANCE_TYPE": "t3.micro", "TM_WORKER_SUBNETS": net.default_subnets(vpc)[0],
            "TM_WORKER_SECURITY_GROUP": net.create_group("tm-demo-worker", "workers", vpc, names.tags()),
            "TM_WORKER_INSTANCE_PROFILE": iam_wrapper.create_instance_profile(
                names.profile("worker"), names.iam_path, names.role("worker"), names.tags()),
            "TM_WORKER_BUNDLE_URI": f"s3://{names.bucket}/bundles/worker-x86_64-0123456789abcdef.tar",
            "TM_TOKEN_PARAMETER": names.token_parameter}


class LoopbackNode:
    """A real node app (FakeLauncher) served on 127.0.0.1 by werkzeug in a thread. ``calls`` lists
    (method, path, X-Cluster-Token sent) of each request it got."""

    def __init__(self, name: str, token: str) -> None:
        from werkzeug.serving import make_server

        from nodeapp import create_app
        from tests.helpers import FakeLauncher

        self.launcher = FakeLauncher()
        self.app = create_app({"cluster_token": token, "node_name": name, "node_url": "http://127.0.0.1:1"},
                              launcher=self.launcher)
        self.calls: list[tuple[str, str, bool]] = []
        app = self.app.wsgi_app

        def recording(environ, start_response):
            self.calls.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], "HTTP_X_CLUSTER_TOKEN" in environ))
            return app(environ, start_response)

        self.app.wsgi_app = recording
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def context(self):
        return self.app.extensions["nodeapp"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
