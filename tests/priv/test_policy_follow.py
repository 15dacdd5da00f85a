"""hive-priv decides with the core's live policy version, except a changed network section.

A real, socket-activated hive-priv (root) on a copy of the shipped policy.
The test plays the core's part: it edits the copy and publishes the new
revision in ``RUN/policy-revision`` as the core does after a reload.
"""

from __future__ import annotations

import json
import time

from enforcer.policy import load_policy
from enforcer.policy.follow import FOLLOW_SECONDS, publish_revision
from enforcer.priv_client import exchange
from tests.priv.conftest import PrivEnv

_STATUS = b'{"request":"container.status"}\n'
_GRANT = "p, service:core, priv, agents, priv.container.status\n"
_CASE = 'resource = "agents"\naction = "priv.container.status"\nexpect = "allow"'


def _status(env: PrivEnv) -> int:
    line, _fds = exchange(env.socket, _STATUS, 30)
    reply = json.loads(line)
    return 200 if reply["ok"] else int(reply["status"])


def _status_becomes(env: PrivEnv, wanted: int) -> None:
    deadline = time.monotonic() + 3 * FOLLOW_SECONDS + 2
    while time.monotonic() < deadline:
        if _status(env) == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"container.status never answered {wanted}; log:\n{env.log()[-3000:]}")


def _revoke_status(env: PrivEnv) -> None:
    csv = env.policy_dir / "policy.csv"
    assert _GRANT in csv.read_text()
    csv.write_text(csv.read_text().replace(_GRANT, ""))
    cases = env.policy_dir / "tests.toml"
    cases.write_text(cases.read_text().replace(_CASE, _CASE.replace('"allow"', '"deny"'), 1))


def _publish(env: PrivEnv) -> None:
    publish_revision(env.run_dir, load_policy(env.policy_dir).revision)


def test_hive_priv_follows_a_published_revision(priv: PrivEnv) -> None:
    assert _status(priv) == 200  # socket activation: hive-priv starts on this first request
    _revoke_status(priv)
    time.sleep(FOLLOW_SECONDS + 0.5)
    assert _status(priv) == 200, "the files alone change nothing: the core has not reloaded"
    _publish(priv)
    _status_becomes(priv, 403)
    events = [json.loads(x) for x in priv.log().splitlines() if x.startswith("{")]
    assert any(e["event"] == "policy.followed" for e in events)


def test_a_changed_network_section_is_not_followed(priv: PrivEnv) -> None:
    assert _status(priv) == 200  # socket activation: hive-priv starts on this first request
    _revoke_status(priv)
    network = priv.policy_dir / "network.toml"
    text = network.read_text()
    assert "agent_ui_port = 8000" in text
    network.write_text(text.replace("agent_ui_port = 8000", "agent_ui_port = 8001"))
    _publish(priv)
    time.sleep(2 * FOLLOW_SECONDS + 0.5)
    # Still the version it started with: the grant it revoked is still live.
    assert _status(priv) == 200
    events = [json.loads(x) for x in priv.log().splitlines() if x.startswith("{")]
    behind = [e for e in events if e["event"] == "policy.behind"]
    assert behind
    assert "network section changed" in behind[-1]["reason"]
    # Refused once, not retried every period while nothing is published.
    assert len(behind) == 1
