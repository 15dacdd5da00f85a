"""The live audit: socket files and the daemons' processes, on real sockets and processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from enforcer.audit.live import gather_live, judge_priv
from enforcer.config import load_config
from tests.audit.conftest import Install
from tests.audit.helpers import audit_json, check_of

REPO = Path(__file__).resolve().parents[2]


def _sockets_as_designed(inst: Install) -> None:
    inst.listen(inst.run_dir / "core.sock", inst.core.uid, inst.core.gid, 0o660)
    inst.listen(inst.run_dir / "priv.sock", 0, inst.core.gid, 0o660)
    inst.listen(inst.run_dir / "agents" / "alpha.sock", inst.agent.uid, inst.agent.gid, 0o600)


def test_sockets_with_the_designed_owners_and_modes_pass(install: Install) -> None:
    _sockets_as_designed(install)
    _, report = audit_json("--live", "--config", str(install.config))
    sockets = check_of(report, "live.sockets")
    assert sockets["status"] == "pass", sockets["findings"]


def test_an_agent_socket_anyone_may_connect_to_is_a_finding(install: Install) -> None:
    _sockets_as_designed(install)
    loose = install.run_dir / "agents" / "alpha.sock"
    os.chmod(loose, 0o666)
    code, report = audit_json("--live", "--config", str(install.config))
    assert code == 1
    sockets = check_of(report, "live.sockets")
    assert sockets["status"] == "fail"
    assert [(f["where"], f["what"]) for f in sockets["findings"]] == [
        (str(loose), "mode 0666, expected 0600")
    ]


def test_an_agent_socket_owned_by_someone_else_is_a_finding(install: Install) -> None:
    _sockets_as_designed(install)
    (install.run_dir / "agents" / "alpha.sock").unlink()
    install.listen(install.run_dir / "agents" / "alpha.sock", install.core.uid, 0, 0o600)
    _, report = audit_json("--live", "--config", str(install.config))
    (finding,) = check_of(report, "live.sockets")["findings"]
    assert "expected agent alpha's uid" in finding["what"]


def test_a_missing_run_directory_means_the_live_audit_could_not_run(install: Install) -> None:
    text = install.config.read_text().replace(str(install.run_dir), str(install.base / "nope"))
    install.config.write_text(text)
    code, report = audit_json("--live", "--config", str(install.config))
    assert code == 2
    assert "does not exist" in report["error"]


def _start_core(inst: Install, user: int | None) -> subprocess.Popen[bytes]:
    if user is not None:
        for d in (inst.run_dir, inst.run_dir / "agents", inst.state_dir):
            os.chown(d, inst.core.uid, inst.core.gid)
        for f in inst.state_dir.iterdir():
            os.chown(f, inst.core.uid, inst.core.gid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "enforcer.cli", "core", "--config", str(inst.config)],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"},
        user=user,
        group=inst.core.gid if user is not None else None,
        extra_groups=[] if user is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    inst.procs.append(proc)
    deadline = time.monotonic() + 20
    while not (inst.run_dir / "core.sock").exists():
        assert proc.poll() is None, "the core exited"
        assert time.monotonic() < deadline, "the core did not bind core.sock"
        time.sleep(0.05)
    return proc


def test_a_core_running_as_root_is_a_finding(install: Install) -> None:
    proc = _start_core(install, user=None)
    code, report = audit_json("--live", "--config", str(install.config))
    assert code == 1
    core = check_of(report, "live.process.core")
    assert core["status"] == "fail"
    (finding,) = core["findings"]
    assert finding["where"] == f"pid {proc.pid}"
    assert "runs as root" in finding["what"]


def test_a_core_running_as_its_own_unprivileged_user_passes(install: Install) -> None:
    proc = _start_core(install, user=install.core.uid)
    _, report = audit_json("--live", "--config", str(install.config))
    core = check_of(report, "live.process.core")
    assert core["status"] == "pass", core["findings"]
    assert f"pid {proc.pid} as {install.core.name}" in core["summary"]
    sockets = check_of(report, "live.sockets")
    assert not [f for f in sockets["findings"] if f["where"].endswith("core.sock")]


_HOLD = "import socket,time; s=socket.socket(fileno=3); time.sleep(60)"
_SELF_BIND = (
    "import os,socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
    "os.chmod(sys.argv[1], 0o660); s.listen(1); print('up', flush=True); time.sleep(60)"
)


def test_a_socket_activated_holder_of_priv_sock_passes_and_a_self_bound_one_fails(
    install: Install,
) -> None:
    config = load_config(install.config)
    path = config.priv_socket
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(path), "--", sys.executable, "-c", _HOLD],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    install.procs.append(activator)
    deadline = time.monotonic() + 10
    while not (waiting := gather_live(config).processes["priv"]):
        assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
        time.sleep(0.02)
    assert judge_priv(waiting, str(path)).status.value == "pass"  # waiting for a connection
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))  # the activator execs the service, same pid, fd 3
        deadline = time.monotonic() + 10
        # argv[0] changes when the activator execs the service (the activator's
        # own argv names python too, after "--": look at argv[0] only)
        while b"python" not in Path(f"/proc/{activator.pid}/cmdline").read_bytes().split(b"\0")[0]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    activated = gather_live(config).processes["priv"]
    verdict = judge_priv(activated, str(path))
    assert verdict.status.value == "pass", verdict.findings
    assert any(f"LISTEN_PID={activator.pid}" in n for n in verdict.notes)
    install.stop(activator)
    path.unlink()

    self_bound = subprocess.Popen(
        [sys.executable, "-c", _SELF_BIND, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    install.procs.append(self_bound)
    assert self_bound.stdout is not None
    assert self_bound.stdout.readline() == b"up\n"
    code, report = audit_json("--live", "--config", str(install.config))
    assert code == 1
    priv = check_of(report, "live.process.priv")
    assert priv["status"] == "fail"
    assert priv["findings"][0]["where"] == f"pid {self_bound.pid}"
    assert "not started by socket activation" in priv["findings"][0]["what"]
