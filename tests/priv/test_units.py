"""The systemd units in systemd/: verified by systemd-analyze, and saying what the design says."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ("hive-priv.socket", "hive-priv.service", "hive-core.service", "hive-gateway.service")
INSTALLED_BINARY = "/usr/local/bin/hive-boundary"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "systemd" / name)
    return parser


def test_units_pass_systemd_analyze_verify_without_any_warning(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # The units name the installed binary; verify checks that it exists, so
    # point the copies at this checkout's entry point (nothing else changes).
    binary = Path(sys.executable).parent / "hive-boundary"
    assert binary.exists()
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED_BINARY, str(binary)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(f"./{n}" for n in UNITS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys etc. are only warnings


def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: an unknown key is reported.
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = (REPO / "systemd" / "hive-core.service").read_text()
    binary = Path(sys.executable).parent / "hive-boundary"
    broken = text.replace(INSTALLED_BINARY, str(binary)).replace("[Service]", "[Service]\nBogus=1")
    (tmp_path / "hive-core.service").write_text(broken)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./hive-core.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Bogus" in proc.stderr


def test_priv_socket_is_group_hive_core_0660_and_the_service_runs_hive_boundary_priv() -> None:
    sock = _unit("hive-priv.socket")["Socket"]
    assert sock["ListenStream"] == "/run/hive/priv.sock"
    assert sock["SocketGroup"] == "hive-core"
    assert sock["SocketMode"] == "0660"
    assert sock.get("Accept", "no") == "no"  # one daemon gets the listener (fd 3)
    svc = _unit("hive-priv.service")
    assert svc["Service"]["ExecStart"] == f"{INSTALLED_BINARY} priv"
    assert svc["Unit"]["Requires"] == "hive-priv.socket"


def test_core_and_gateway_are_unprivileged_and_hardened() -> None:
    core = _unit("hive-core.service")["Service"]
    assert core["User"] == "hive-core"
    assert core["ExecStart"] == f"{INSTALLED_BINARY} core"
    assert core["RestrictAddressFamilies"] == "AF_UNIX"
    gateway = _unit("hive-gateway.service")["Service"]
    assert gateway["User"] == "hive-gateway"
    assert gateway["ExecStart"] == f"{INSTALLED_BINARY} gateway"
    for svc in (core, gateway):
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
            "RestrictSUIDSGID": "yes",
        }.items():
            assert svc[key] == value, key


# Process attributes a service's children inherit (seccomp filters, namespace
# and network sandboxing): in hive-priv's unit they would also bind the agents,
# which are hive-priv's children.
_INHERITED_BY_CHILDREN = (
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "PrivateNetwork",
    "IPAddressDeny",
    "MemoryDenyWriteExecute",
    "RestrictNamespaces",
)


def test_hive_privs_unit_takes_nothing_from_its_agents_that_they_need() -> None:
    # Found in review: RestrictAddressFamilies=AF_UNIX AF_NETLINK on hive-priv
    # passed to every agent process, which then could not open a TCP socket
    # for its web UI (the gateway's only way in) or its granted egress.
    svc = _unit("hive-priv.service")["Service"]
    present = sorted(key for key in _INHERITED_BY_CHILDREN if key in svc)
    assert present == [], f"hive-priv.service sets {present}: its agents would inherit them"
