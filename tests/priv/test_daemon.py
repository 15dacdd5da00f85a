"""hive-priv as a process: socket activation only, peer credentials, typed requests."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from enforcer.errors import BadRequest, NotFound, Unavailable
from enforcer.priv_client import PrivClient, exchange
from enforcer.priv_protocol import MAX_REQUEST_BYTES
from tests.priv.conftest import REPO, PrivEnv, run_as, throwaway_user


def _raw(env: PrivEnv, payload: bytes) -> dict[str, object]:
    try:
        line, fds = exchange(env.socket, payload, 30)
    except Unavailable as e:
        raise AssertionError(f"{e.reason}; hive-priv log:\n{env.log()}") from e
    assert fds == []
    reply: dict[str, object] = json.loads(line)
    return reply


def test_refuses_to_start_without_socket_activation() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "enforcer.cli", "priv"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "must be socket-activated" in proc.stderr
    assert "never binds" in proc.stderr


def test_refuses_a_listen_pid_that_is_not_its_own() -> None:
    # LISTEN_FDS meant for another process (LISTEN_PID != getpid) is not ours.
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID="1")
    proc = subprocess.run(
        [sys.executable, "-m", "enforcer.cli", "priv"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "must be socket-activated" in proc.stderr


def test_serves_when_socket_activated_with_group_and_mode_of_the_unit(priv: PrivEnv) -> None:
    st = os.stat(priv.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, priv.core.gid, 0o660)
    reply = _raw(priv, b'{"request":"container.start","agent":"nosuch"}\n')
    assert reply["ok"] is False
    assert reply["status"] == 404
    log = priv.log()
    assert "Execing" in log  # systemd-socket-activate handed over the socket
    events = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert any(e["event"] == "priv.serving" for e in events)
    result = [e for e in events if e["event"] == "priv.result"]
    assert result
    assert result[-1]["request"] == "container.start"
    assert result[-1]["ok"] is False


def test_core_uid_is_served_through_the_group_grant(priv: PrivEnv) -> None:
    code = (
        "import socket,sys,json; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        's.sendall(b\'{"request":"container.stop","agent":"nosuch"}\\n\');'
        "print(s.makefile().readline())"
    )
    out = run_as(priv.core, code, str(priv.socket))
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["ok"] is False
    assert reply["status"] == 404


def test_refuses_a_peer_with_another_uid_and_logs_it(priv: PrivEnv) -> None:
    code = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        's.sendall(b\'{"request":"container.destroy","agent":"nosuch"}\\n\');'
        "print(s.makefile().readline())"
    )
    with throwaway_user() as stranger:
        # First line of defence: the socket's group and mode (the kernel).
        out = run_as(stranger, code, str(priv.socket))
        assert out.returncode != 0
        assert "PermissionError" in out.stderr
        # Second: SO_PEERCRED. Open the file mode for this check only, as a
        # mis-set mode would, and hive-priv must still refuse the stranger.
        os.chmod(priv.socket, 0o666)
        try:
            out = run_as(stranger, code, str(priv.socket))
        finally:
            os.chmod(priv.socket, 0o660)
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        assert reply["ok"] is False
        assert reply["status"] == 403
        assert str(stranger.uid) in str(reply["reason"])
        events = [json.loads(x) for x in priv.log().splitlines() if x.startswith("{")]
        refused = [e for e in events if e["event"] == "priv.peer_refused"]
        assert refused
        assert refused[-1]["peer_uid"] == stranger.uid
        assert not any(
            e["event"] == "priv.request" and e.get("peer_uid") == stranger.uid for e in events
        )


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b'{"request":"container.nuke","agent":"a"}\n', "unknown_request", "unknown request"),
        (b'{"request":"shell.exec","cmd":"id"}\n', "unknown_request", "unknown request"),
        (b'{"request":"container.start","agent":"a","uid":0}\n', "bad_request", "unknown field"),
        (
            b'{"request":"state.read","agent":"a","rel_path":"x","follow_symlinks":true}\n',
            "bad_request",
            "unknown field",
        ),
        (b'{"request":"container.start"}\n', "bad_request", "missing field"),
        (b'{"request":"container.start","agent":7}\n', "bad_request", "agent"),
        (b'{"request":"state.read","agent":"a","rel_path":"../x"}\n', "bad_request", "dot"),
        (b"not json\n", "bad_request", "JSON"),
        (b"[1,2]\n", "bad_request", "object"),
    ],
)
def test_refuses_unknown_requests_and_fields_and_keeps_serving(
    priv: PrivEnv, payload: bytes, code: str, words: str
) -> None:
    reply = _raw(priv, payload)
    assert reply["ok"] is False
    assert reply["error"] == code
    assert words in str(reply["reason"])
    assert "Traceback" not in json.dumps(reply)
    # still alive and serving
    again = _raw(priv, b'{"request":"container.status"}\n')
    assert again == {"ok": True, "result": {"containers": {}}}
    assert priv.proc is not None
    assert priv.proc.poll() is None


def test_an_oversized_request_gets_413_not_a_crash(priv: PrivEnv) -> None:
    big = b'{"request":"state.read","agent":"a","rel_path":"' + b"a" * MAX_REQUEST_BYTES + b'"}\n'
    reply = _raw(priv, big)
    assert reply["ok"] is False
    assert reply["status"] == 413
    assert _raw(priv, b"{}\n")["status"] == 400
    assert priv.proc is not None
    assert priv.proc.poll() is None


def test_several_requests_on_one_connection_each_get_one_answer(priv: PrivEnv) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(priv.socket))
        s.sendall(b'{"request":"x"}\n{"request":"container.stop","agent":"nosuch"}\n')
        f = s.makefile("rb")
        first, second = json.loads(f.readline()), json.loads(f.readline())
    assert first["error"] == "unknown_request"
    assert second["status"] == 404


def test_client_maps_errors_to_hive_errors(priv: PrivEnv) -> None:
    client = PrivClient(priv.socket, timeout=30)
    with pytest.raises(BadRequest):
        asyncio.run(client.read_state_file("a", "/etc/shadow"))
    with pytest.raises(NotFound):
        asyncio.run(client.read_state_file("nosuch", "x"))
    with pytest.raises(NotFound):
        asyncio.run(client.container_stop("nosuch"))
