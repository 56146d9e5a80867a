"""AWS mode keeps a node's journal on its volume: the node's systemd unit gives it DATA_DIR and
restarts it; the caller's own DATA_DIR is not passed to the nodes."""

from __future__ import annotations

import re

from provisioning.userdata import node_script
from tests.test_aws_userdata import DELIVERY, NODE_ENV
from tmrun.aws import node_settings


def unit(script: str) -> str:
    return re.search(r"tm-node\.service <<'UNIT'\n(.*?)\nUNIT\n", script, re.S).group(1)


def test_node_unit_journals_to_var_lib_and_restarts_the_node():
    lines = unit(node_script(DELIVERY, NODE_ENV)).splitlines()
    assert "StateDirectory=taskmanager" in lines and "StateDirectoryMode=0700" in lines
    assert "Environment=DATA_DIR=/var/lib/taskmanager" in lines
    assert "Restart=on-failure" in lines and "User=tm" in lines
    # node.env (the caller's JOURNAL_SYNC, say) comes after, so it could override; it never holds DATA_DIR
    assert lines.index("Environment=DATA_DIR=/var/lib/taskmanager") < lines.index("EnvironmentFile=/etc/tm/node.env")


def test_the_callers_data_dir_stays_home_and_journal_settings_travel():
    passed = node_settings({"DATA_DIR": "/home/me/tm", "JOURNAL_SYNC": "always", "JOURNAL_BATCH_MS": "8"})
    assert passed == {"JOURNAL_SYNC": "always", "JOURNAL_BATCH_MS": "8"}
