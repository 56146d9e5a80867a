"""A borrowed slot is held for the whole of a slow EC2 launch: the borrower renews its loans with
the lender (a real node on loopback) while RunInstances (moto, slowed by a hook on the launcher's
real client) takes longer than a renewal keeps a loan. Before, the loan lapsed mid-launch and the
instance it paid for was stopped at once."""

from __future__ import annotations

import time

from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from nodeapp.node import Node
from tests.aws_helpers import LoopbackNode, aws, service_models  # noqa: F401
from tests.test_aws_launcher import NODE_URL, alive_ids, backlog, env, make_launcher  # noqa: F401

TOKEN = "loan-token"
LAUNCH_SECONDS = 6.0  # a renewal keeps a loan 2/3 x LOAN_TTL_SECONDS (6 s): 4 s


def test_a_borrowed_slot_outlives_a_launch_slower_than_the_loan(env):  # noqa: F811
    lender = LoopbackNode("node-2", TOKEN)
    try:
        launcher = make_launcher(env, time.monotonic, node_name="node-1")
        launcher.ec2.meta.events.register("before-call.ec2.RunInstances", lambda **_: time.sleep(LAUNCH_SECONDS))
        state = Node.build(max_workers=0, loan_ttl=6.0)  # every slot it uses is borrowed
        scaler = Scaler(state, launcher, PeerClient(lender.url, TOKEN, "node-1"), node_url=NODE_URL,
                        scale_wait=0.0, hash_rate=1000.0, boot_timeout=300.0)
        backlog(state, count=1)
        started = time.monotonic()
        scaler.tick()  # borrows one slot and launches on it: the launch takes 6 s
        assert time.monotonic() - started >= LAUNCH_SECONDS
        (worker,) = state.workers.workers()
        assert worker.borrowed and worker.state == "pending"
        assert alive_ids(env["ec2"]) == {worker.id}  # its instance runs: not stopped as beyond the quota
        (loan,) = state.workers.held_loans()
        assert list(lender.context.node.workers._loans.lent) == [loan]  # the lender still lends it
        renewals = [call for call in lender.calls if call[1] == "/renew_quota"]
        assert len(renewals) >= 2  # renewed while the launch went on
        scaler.tick()  # the next run keeps it: nothing lost, nothing stopped
        assert [w.id for w in state.workers.workers()] == [worker.id] and alive_ids(env["ec2"]) == {worker.id}
    finally:
        lender.close()
