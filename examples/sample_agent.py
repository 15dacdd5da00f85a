#!/usr/bin/env python3
"""A sample hive-boundary agent: the program inside each demo container.

It is also the reference client for agent authors, so it is small and uses
only the standard library. An agent has exactly two ways to be reached or to
reach anything of hive-boundary:

1. **its own unix socket** (``HIVE_SOCKET``, ``RUN/agents/<name>.sock``): JSON
   over HTTP/1.1 to the core, see ``docs/agents.md`` and
   ``enforcer/openapi/agent.json``. The socket *is* the identity: there is no
   token, no header to set; the core knows who you are from which socket you
   connected to, confirmed by your uid (``SO_PEERCRED``).
2. **its own web UI**, served inside its network namespace on
   ``HIVE_UI_PORT``. The operator sees it through the gateway at
   ``/agent/<name>/``; the gateway strips that prefix and sends it in
   ``X-Forwarded-Prefix``. Use relative links, or prefix absolute ones (and
   redirects) with that header.

Roles (``--role``) for the demo:

- ``asker``: asks the operator a question and waits for the answer;
- ``approver``: requests the operator's approval and waits for the decision;
- ``worker``: writes state files and sends messages.

Run: ``python3 -I sample_agent.py --role asker`` with ``HIVE_SOCKET`` (and
optionally ``HIVE_UI_PORT``, ``HIVE_AGENT``) set, as hive-priv does.
"""

from __future__ import annotations

import argparse
import html
import http.client
import http.server
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any

__all__ = ["AgentError", "AgentSocket", "main"]


class AgentError(Exception):
    """The core refused a request (status and JSON reason), or could not be reached."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class _UnixConnection(http.client.HTTPConnection):
    """``http.client`` over an AF_UNIX stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentSocket:
    """The agent API on the agent's own socket: one method per operation."""

    def __init__(self, path: str, timeout: float = 75.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(
        self, method: str, target: str, body: Any = None, *, raw: bytes | None = None
    ) -> Any:
        """One request; the decoded JSON answer (bytes for non-JSON); AgentError on 4xx/5xx."""
        headers = {"Accept": "application/json"}
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            ctype = resp.getheader("Content-Type", "")
        except OSError as e:
            raise AgentError(0, f"socket {self.path}: {e}") from e
        finally:
            conn.close()
        value: Any = json.loads(payload) if ctype.startswith("application/json") else payload
        if resp.status >= 400:
            reason = value.get("reason", "") if isinstance(value, dict) else str(value)[:200]
            raise AgentError(resp.status, reason)
        return value

    # --- the operations (enforcer/openapi/agent.json) ---------------------------

    def whoami(self) -> dict[str, Any]:
        """``{"agent", "principal", "uid"}``: who this socket speaks for."""
        out: dict[str, Any] = self.request("GET", "/v1/whoami")
        return out

    def status(self, state: str, detail: str = "") -> None:
        """Report a one-word status (``[a-z][a-z0-9_.-]*``) and a detail line."""
        self.request("POST", "/v1/status", {"state": state, "detail": detail})

    def message(self, text: str) -> None:
        """Send the operator a message."""
        self.request("POST", "/v1/messages", {"text": text})

    def ask(self, text: str, options: list[str] | None = None) -> int:
        """Ask the operator a question; returns its id."""
        q = self.request("POST", "/v1/questions", {"text": text, "options": options or []})
        return int(q["id"])

    def wait_answer(self, qid: int, wait: float = 30.0) -> str | None:
        """Wait up to ``wait`` seconds for the answer (None: not answered yet)."""
        q = self.request("GET", f"/v1/questions/{qid}?wait={wait:g}")
        return q["answer"] if isinstance(q.get("answer"), str) else None

    def request_approval(self, action: str, detail: str = "") -> int:
        """Ask the operator to approve ``action``; returns the request's id."""
        a = self.request("POST", "/v1/approvals", {"action": action, "detail": detail})
        return int(a["id"])

    def wait_decision(self, aid: int, wait: float = 30.0) -> str | None:
        """``approved``/``denied``, or None if the operator has not decided yet."""
        a = self.request("GET", f"/v1/approvals/{aid}?wait={wait:g}")
        return a["decision"] if isinstance(a.get("decision"), str) else None

    def write_state(self, rel_path: str, data: bytes) -> None:
        """Replace ``state/<rel_path>`` (atomic on the core's side)."""
        self.request("PUT", f"/v1/state/{urllib.parse.quote(rel_path)}", raw=data)

    def read_state(self, rel_path: str) -> bytes:
        """The bytes of ``state/<rel_path>``."""
        out: bytes = self.request("GET", f"/v1/state/{urllib.parse.quote(rel_path)}")
        return out

    def list_state(self) -> list[Any]:
        """The files of one's own ``state/``."""
        out: list[Any] = self.request("GET", "/v1/state")["files"]
        return out


# --- what the demo agents do -------------------------------------------------------


class Agent:
    """One role's work plus what the web UI shows."""

    def __init__(self, api: AgentSocket, name: str, role: str) -> None:
        self.api = api
        self.name = name
        self.role = role
        self.state = "starting"
        self.log: list[str] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def note(self, line: str) -> None:
        """Remember ``line`` for the web UI and print it to the agent's log."""
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        with self._lock:
            self.log = [*self.log[-49:], stamped]
        print(stamped, flush=True)

    def set_status(self, state: str, detail: str) -> None:
        """Report the status to the core, and show it in the UI."""
        self.state = state
        self.api.status(state, detail)
        self.note(f"status {state}: {detail}")

    def run(self) -> None:
        """Connect (the socket may be a moment behind the process), then do the role's work."""
        for attempt in range(60):
            try:
                me = self.api.whoami()
                break
            except AgentError as e:
                if e.status != 0 or self.stopping.wait(min(0.2 * (attempt + 1), 2.0)):
                    raise
        else:
            raise AgentError(0, "the agent socket never answered")
        self.note(f"I am {me['principal']} (uid {me['uid']}), speaking on {self.api.path}")
        getattr(self, f"_{self.role}")()

    def _asker(self) -> None:
        self.set_status("asking", "waiting for the operator's answer")
        qid = self.api.ask(
            "Which greeting should my daily report open with?", ["Hello", "Good day", "Hi all"]
        )
        self.note(f"asked question {qid}")
        answer = None
        while answer is None and not self.stopping.is_set():
            answer = self.api.wait_answer(qid)
        if answer is None:
            return
        self.api.write_state("report/greeting.txt", answer.encode())
        self.api.message(f"Thanks - my reports will open with {answer!r}.")
        self.set_status("done", f"the operator answered: {answer}")

    def _approver(self) -> None:
        self.set_status("waiting", "waiting for approval to publish the report")
        aid = self.api.request_approval(
            "publish-report", "Publish this week's report to the team wiki (HTTPS egress)."
        )
        self.note(f"requested approval {aid}")
        decision = None
        while decision is None and not self.stopping.is_set():
            decision = self.api.wait_decision(aid)
        if decision is None:
            return
        if decision == "approved":
            self.api.write_state("published.json", json.dumps({"approval": aid}).encode())
            self.set_status("done", "approved: report published")
        else:
            self.set_status("idle", "denied: report not published")

    def _worker(self) -> None:
        self.set_status("working", "indexing documents")
        for step in range(1, 4):
            progress = {"step": step, "of": 3, "at": time.time()}
            self.api.write_state("progress.json", json.dumps(progress).encode())
            self.api.message(f"indexed batch {step} of 3")
            self.note(f"wrote state/progress.json (step {step})")
            if self.stopping.wait(0.5):
                return
        files = self.api.list_state()
        self.set_status("idle", f"indexing finished; {len(files)} file(s) in state/")


# --- the agent's own web UI ------------------------------------------------------------

_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~@-]+)*")  # @: the view-capability segment
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}</title>
<style>body{{font:15px system-ui,sans-serif;margin:1.5rem;max-width:50rem}}
pre{{background:#f4f4f4;padding:.6rem;white-space:pre-wrap}}</style></head>
<body><h1>Agent {name}</h1>
<p>Role <b>{role}</b>, status <b>{state}</b>. This page is served by the agent
inside its own network namespace; the operator sees it through the gateway.</p>
<h2>Activity</h2><pre>{log}</pre>
<h2>Leave a note in my state</h2>
<form method="post" action="note"><input name="note" maxlength="200" required>
<button>Save</button></form>
<p><a href="status.json">status.json</a> (relative link) &middot;
<a href="{prefix}/status.json">the same, absolute with X-Forwarded-Prefix</a></p>
</body></html>
"""


def _prefix(value: str | None) -> str:
    # Trust only a well-formed path: the gateway sets it, but never echo
    # anything that could break out of an attribute or a Location header.
    return value if value and _PREFIX.fullmatch(value) else ""


def make_handler(agent: Agent) -> type[http.server.BaseHTTPRequestHandler]:
    """The UI's request handler class, bound to ``agent``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "sample-agent"

        def _send(self, status: int, ctype: str, body: bytes, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            prefix = _prefix(self.headers.get("X-Forwarded-Prefix"))
            if path == "/":
                with agent._lock:
                    log = "\n".join(agent.log)
                page = _PAGE.format(
                    name=html.escape(agent.name),
                    role=html.escape(agent.role),
                    state=html.escape(agent.state),
                    log=html.escape(log),
                    prefix=html.escape(prefix),
                )
                self._send(200, "text/html; charset=utf-8", page.encode())
            elif path == "/status.json":
                body = {"agent": agent.name, "role": agent.role, "state": agent.state}
                self._send(200, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain", b"not found\n")

        def do_POST(self) -> None:
            if urllib.parse.urlsplit(self.path).path != "/note":
                self._send(404, "text/plain", b"not found\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 4096:
                self._send(400, "text/plain", b"a short form, please\n")
                return
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            text = (form.get("note") or [""])[0][:200]
            try:
                agent.api.write_state("notes/latest.txt", text.encode())
                agent.note(f"saved a note from the UI ({len(text)} characters)")
            except AgentError as e:
                self._send(502, "text/plain", f"the core refused: {e}\n".encode())
                return
            # An absolute redirect must carry the prefix the operator sees.
            prefix = _prefix(self.headers.get("X-Forwarded-Prefix"))
            self._send(303, "text/plain", b"saved\n", Location=f"{prefix}/")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Run the role's work in a thread and the web UI until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--role", choices=("asker", "approver", "worker"), default="worker")
    parser.add_argument("--socket", default=os.environ.get("HIVE_SOCKET"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HIVE_UI_PORT", "8000")))
    args = parser.parse_args(argv)
    if not args.socket:
        parser.error("no agent socket: set HIVE_SOCKET or pass --socket")
    name = os.environ.get("HIVE_AGENT") or os.path.basename(args.socket).removesuffix(".sock")
    agent = Agent(AgentSocket(args.socket), name, args.role)
    # All addresses: it is inside the agent's own namespace, reached only via its veth.
    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), make_handler(agent))

    def work() -> None:
        try:
            agent.run()
        except AgentError as e:
            agent.state = "error"
            agent.note(f"error: {e}")

    def stop(*_: object) -> None:
        agent.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=work, name="work", daemon=True).start()
    agent.note(f"web UI on port {args.port}")
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
