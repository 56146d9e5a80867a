"""A node finds its peer by tag at boot (provisioning/peer_lookup.py), under moto."""

from __future__ import annotations

from provisioning import peer_lookup
from tests.aws_helpers import aws, service_models  # noqa: F401


def launch(ec2, name: str, cluster: str = "demo", role: str = "node") -> dict:
    (instance,) = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                    TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                        {"Key": "tm-cluster", "Value": cluster}, {"Key": "tm-role", "Value": role},
                                        {"Key": "Name", "Value": name}]}])["Instances"]
    return instance


def test_prints_the_peers_private_url(aws, capsys):  # noqa: F811
    ec2 = aws.client("ec2")
    launch(ec2, "node-1")
    peer = launch(ec2, "node-2")
    launch(ec2, "node-2", cluster="other")  # another cluster's node of the same name
    launch(ec2, "node-2", role="worker")
    code = peer_lookup.main(["--region", "us-east-1", "--cluster", "demo", "--peer", "node-2", "--wait", "0"], ec2=ec2)
    assert code == 0
    assert capsys.readouterr().out == f"PEER_URL=http://{peer['PrivateIpAddress']}:8000\n"


def test_waits_for_the_peer_then_gives_up(aws, capsys):  # noqa: F811
    ec2 = aws.client("ec2")
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds
        if len(slept) == 2:
            launch(ec2, "node-1")  # launched a little after the node that looks for it

    assert peer_lookup.wait_for_peer(ec2, "demo", "node-1", 60, clock=lambda: now[0], sleep=sleep) is not None
    assert slept == [5.0, 5.0]
    assert peer_lookup.wait_for_peer(ec2, "demo", "node-9", 12, clock=lambda: now[0], sleep=sleep) is None
    code = peer_lookup.main(["--region", "us-east-1", "--cluster", "demo", "--peer", "node-9", "--wait", "0"], ec2=ec2)
    assert code == 1 and "no node named node-9" in capsys.readouterr().err
