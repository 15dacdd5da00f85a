"""The demo sends the operator token only to its own gateway.

Found by an attack review: the demo took "something accepts connections on
the port" for "the gateway is up", so a local user listening there first got
the operator token in the demo's login. The demo now refuses a port already
in use, and waits for a listener its gateway process itself holds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from enforcer.demo import _holds_listener, _port_free


def test_a_port_someone_listens_on_is_not_free() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        assert not _port_free("127.0.0.1", port)
    assert _port_free("127.0.0.1", port)


def test_only_the_process_holding_the_listener_counts_as_listening() -> None:
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print(s.getsockname()[1], flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        assert _holds_listener(other.pid, port)
        assert not _holds_listener(os.getpid(), port)  # it accepts, but it is not ours
        with socket.socket() as mine:
            mine.bind(("127.0.0.1", 0))
            mine.listen()
            assert _holds_listener(os.getpid(), mine.getsockname()[1])
    finally:
        other.kill()
        other.wait()
