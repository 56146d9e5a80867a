"""``python -m provisioning.peer_lookup``: a node's user-data finds its peer node by tag.

AWS mode gives each node its peer's private address at boot instead of sending it over the
internet with ``POST /configure``: the node asks EC2 (DescribeInstances, with its instance role)
for the cluster's other node by its tags and prints ``PEER_URL=http://<private ip>:<port>`` for
``/etc/tm/node.env``. The peer is launched seconds apart, so this waits for it (``--wait``).
Exit code 0 with the line, 1 if no peer appeared in time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from provisioning.instances import ALIVE_STATES, cluster_instances
from provisioning.naming import NODE_PORT


def peer_address(ec2: Any, cluster: str, peer_name: str) -> str | None:
    """The private IPv4 address of the cluster's node named ``peer_name``, if it has one yet."""
    found = cluster_instances(ec2, cluster, role="node", states=ALIVE_STATES,
                              extra_filters=[{"Name": "tag:Name", "Values": [peer_name]}])
    addresses = sorted(i["PrivateIpAddress"] for i in found if i.get("PrivateIpAddress"))
    return addresses[0] if addresses else None


def wait_for_peer(ec2: Any, cluster: str, peer_name: str, wait: float, *,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                  interval: float = 5.0) -> str | None:
    """``peer_address``, asked every ``interval`` seconds until ``wait`` seconds have passed
    (an AWS error counts as not found yet)."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = clock() + wait
    while True:
        try:
            address = peer_address(ec2, cluster, peer_name)
        except (BotoCoreError, ClientError) as err:
            print(f"peer_lookup: DescribeInstances failed: {err}", file=sys.stderr)
            address = None
        if address or clock() >= deadline:
            return address
        sleep(interval)


def main(argv: list[str] | None = None, ec2: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioning.peer_lookup", description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--peer", required=True, help="the peer's Name tag, e.g. node-2")
    parser.add_argument("--port", type=int, default=NODE_PORT)
    parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the peer (default 600)")
    args = parser.parse_args(argv)
    if ec2 is None:
        import boto3
        from botocore.config import Config

        ec2 = boto3.client("ec2", region_name=args.region,
                           config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 5}))
    address = wait_for_peer(ec2, args.cluster, args.peer, args.wait)
    if not address:
        print(f"peer_lookup: no node named {args.peer} in cluster {args.cluster} within {args.wait:g}s",
              file=sys.stderr)
        return 1
    print(f"PEER_URL=http://{address}:{args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
