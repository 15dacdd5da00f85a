"""hive-priv notices a lost or changed table by itself and puts the isolation back.

`systemctl restart nftables` on Debian runs `flush ruleset`: hive-priv's own
table is gone while every container's veth stays up. A running hive-priv
checks its table and links every few seconds and repairs them; found by an
attack review (nothing repaired it until someone ran `netns reconcile`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess

from enforcer.priv import RECONCILE_SECONDS
from enforcer.priv_client import PrivClient
from tests.conftest import wait_until
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv


def _table(env: PrivEnv) -> str | None:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", env.table], capture_output=True, text=True
    )
    return out.stdout if out.returncode == 0 else None


def test_a_deleted_table_is_restored_with_every_containers_isolation(priv: PrivEnv) -> None:
    name = priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)
    created = asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "1"]))
    address = created["net"]["ipv4"]
    before = _table(priv)
    assert before is not None
    assert address in before
    # What `flush ruleset` does to our table (only ours: this test's unique table).
    subprocess.run(["nft", "delete", "table", "inet", priv.table], check=True)
    assert _table(priv) is None
    wait_until(
        "the table back, with the container's elements",
        lambda: (t := _table(priv)) is not None and address in t,
        3 * RECONCILE_SECONDS + 5,
    )
    # The line is written once the repair is done, a moment after the table is back.
    wait_until(
        "isolation.repaired in hive-priv's log",
        lambda: any(
            json.loads(x)["event"] == "isolation.repaired"
            for x in priv.log().splitlines()
            if x.startswith("{")
        ),
        5,
    )
