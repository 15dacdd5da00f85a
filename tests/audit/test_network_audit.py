"""The network layer of the audit: drift of a live table, and the probe's matrix.

Each test owns a uniquely named nftables table, namespaces and subnets
(``tests.netns.helpers``) and removes them afterwards, even on failure.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from netns.manager import NetnsManager
from tests.audit.conftest import Install
from tests.audit.helpers import audit_json, check_of, policy_copy
from tests.netns.helpers import HTTP_EGRESS as EGRESS
from tests.netns.helpers import Names, make_policy, managed


def _policy_dir(tmp_path: Path, names: Names) -> Path:
    """The shipped policy, with the network section on this test's own subnets."""
    policy = policy_copy(tmp_path / "policy")
    (policy / "network.toml").write_text(
        f'[addressing]\nipv4 = "{names.ipv4}"\nipv6 = "{names.ipv6}"\n'
        f"agent_ui_port = 8000\n\n{EGRESS}"
    )
    return policy


def _net_args(names: Names, m: NetnsManager) -> list[str]:
    return [
        "--table", names.table,
        "--netns-prefix", names.prefix,
        "--ifprefix", names.ifprefix,
        "--netns-state", str(m.state_path),
        "--outside-v4", names.outside_v4,
        "--outside-v6", names.outside_v6,
    ]  # fmt: skip


def test_a_flushed_table_is_drift_and_the_audit_repairs_nothing(
    names: Names, install: Install, tmp_path: Path
) -> None:
    policy = _policy_dir(tmp_path, names)
    with managed(names, make_policy(names, EGRESS)) as m:
        m.up("alpha", ["role:agent"])
        args = ["--live", "--config", str(install.config), "--policy", str(policy)]
        _, report = audit_json(*args, *_net_args(names, m))
        assert check_of(report, "network.drift")["status"] == "pass"

        subprocess.run(["nft", "flush", "table", "inet", names.table], check=True)
        code, report = audit_json(*args, *_net_args(names, m))
        assert code == 1
        drift = check_of(report, "network.drift")
        assert drift["status"] == "fail"
        assert any("missing rule" in f["what"] for f in drift["findings"])
        assert not m.drift().in_sync, "the audit is read-only: the table stays flushed"


def _delete_rule(table: str, chain: str, comment: str) -> None:
    listing = subprocess.run(
        ["nft", "-a", "list", "chain", "inet", table, chain],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(rf'comment "{re.escape(comment)}" # handle (\d+)', listing)
    assert m is not None, listing
    subprocess.run(
        ["nft", "delete", "rule", "inet", table, chain, "handle", m.group(1)], check=True
    )


def test_the_probe_finds_a_host_address_reachable_by_mistake(names: Names, tmp_path: Path) -> None:
    policy = _policy_dir(tmp_path, names)
    with managed(names, make_policy(names, EGRESS)) as m:
        m.up("alpha", ["role:agent"])
        m.up("beta", [])
        args = ["--probe", "--policy", str(policy), *_net_args(names, m)]
        code, report = audit_json(*args)
        probe = check_of(report, "network.probe")
        assert probe["status"] == "pass", probe["findings"]
        assert code == 0, "a clean installation's offline + probe audit holds"
        assert report["reachability"], "the heat-map's cells are in the report"

        _delete_rule(names.table, "input", "no host address is reachable from a container")
        page = tmp_path / "audit.html"
        code, report = audit_json(*args, "--html", str(page))
        assert code == 1
        assert 'class="mismatch"' in page.read_text(), "the heat-map shows the wrong cell"
        probe = check_of(report, "network.probe")
        assert probe["status"] == "fail"
        wrong = {(f["where"], f["detail"]["target"]) for f in probe["findings"]}
        assert ("alpha", "host:alpha-veth4") in wrong
        assert all(f["detail"]["expected"] is False for f in probe["findings"])
        assert all(f["detail"]["outcome"] == "open" for f in probe["findings"])
