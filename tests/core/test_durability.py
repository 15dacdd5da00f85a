"""An acknowledged write survives SIGKILL: every 2xx write is there after restart, whole."""

from __future__ import annotations

import os
import threading
import time

import requests

from tests.core.conftest import OPERATOR, CoreProcess
from tests.core.unixhttp import unix_session


def test_every_acknowledged_write_survives_sigkill(core_process: CoreProcess) -> None:
    core_process.start()
    op = unix_session(str(core_process.config.core_socket), OPERATOR)
    resp = op.post("http://unix/api/agents", json={"name": "alpha", "uid": os.getuid()})
    assert resp.status_code == 201, resp.text
    sock = str(core_process.config.agent_socket("alpha"))

    acked: dict[str, list[tuple[int, str]]] = {"questions": [], "messages": []}
    stop = threading.Event()
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        agent = unix_session(sock)
        n = 0
        while not stop.is_set():
            n += 1
            text = f"w{worker}-{n}-" + "x" * (n % 300)
            kind = "questions" if n % 2 else "messages"
            try:
                r = agent.post(f"http://unix/v1/{kind}", json={"text": text}, timeout=5)
            except requests.RequestException:
                return  # the core died mid-request: not acknowledged
            if r.status_code == 201:
                with lock:
                    acked[kind].append((r.json()["id"], text))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    core_process.kill()  # SIGKILL under load
    stop.set()
    for t in threads:
        t.join(10)
    assert sum(len(v) for v in acked.values()) > 20

    core_process.start()
    op = unix_session(str(core_process.config.core_socket), OPERATOR)
    questions = {
        q["id"]: q["text"]
        for q in op.get("http://unix/api/questions?agent=alpha").json()["questions"]
    }
    details = op.get("http://unix/api/agents/alpha").json()
    assert details["name"] == "alpha"
    for qid, text in acked["questions"]:
        if qid in questions:
            assert questions[qid] == text
    # questions listing is capped at 500: check each acknowledged one individually too
    agent = unix_session(sock)
    for qid, text in acked["questions"]:
        r = agent.get(f"http://unix/v1/questions/{qid}")
        assert r.status_code == 200, (qid, r.text)
        assert r.json()["text"] == text
    import sqlite3

    db = sqlite3.connect(core_process.config.database)
    rows = dict(db.execute("SELECT id, text FROM messages WHERE agent='alpha'").fetchall())
    db.close()
    for mid, text in acked["messages"]:
        assert rows.get(mid) == text
    # The restarted core serves the agent's socket again, without re-registration.
    assert agent.get("http://unix/v1/whoami").json()["agent"] == "alpha"
    core_process.stop()
