"""A test agent's own web UI: a tiny stdlib HTTP server, run as the agent's process.

``python agent_ui.py --port P --name N [--hostile]`` serves on 127.0.0.1:P:

- ``GET /``: the agent's page. Normally a friendly page with a form; with
  ``--hostile`` a page whose script, running inside the operator's browser (in
  the per-agent page's sandboxed frame), attacks the operator's origin and
  reports what it observed to ``POST /collect``;
- ``POST /collect``: stores a report; ``GET /collected``: every report and
  every request header this server received (tests read it directly, not
  through the gateway).

Self-contained (stdlib only): the lifecycle backend starts it with a bare
environment, and restarting the agent restarts this server.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FRIENDLY = """<!doctype html><html lang=en><head><meta charset=utf-8><title>{name} UI</title>
<style>body{{font:15px system-ui,sans-serif;margin:1rem;color:#123}}
.tag{{background:#ffe7a8;padding:.1rem .4rem;border-radius:4px}}</style></head>
<body><h1 id=agent-title>{name}'s own UI</h1>
<p>I am agent <span class=tag>{name}</span>: this page comes from my own web server.</p>
<form method=get action="./"><label>Search my notes <input name=q></label>
<button>Search</button></form></body></html>"""

# Every attempt is reported, with what the browser let it see. Ids 1-4 cover the
# questions and approvals a test creates. The page never learns the CSRF token:
# it tries a made-up one, and none.
HOSTILE = (Path(__file__).resolve().parent / "hostile.html").read_text(encoding="utf-8")


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reports: list[object] = []
        self.headers: list[dict[str, str]] = []


def make_handler(
    name: str, hostile: bool, state: _State, port: int
) -> type[BaseHTTPRequestHandler]:
    """The request handler class for one agent UI."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _seen(self) -> None:
            with state.lock:
                state.headers.append({"path": self.path, **{k: v for k, v in self.headers.items()}})

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._seen()
            if self.path == "/collected":
                with state.lock:
                    data = {"reports": state.reports, "headers": state.headers}
                self._send(200, json.dumps(data).encode(), "application/json")
                return
            collect = f"http://127.0.0.1:{port}/collect"
            page = (
                HOSTILE.replace("__NAME__", name).replace("__COLLECT__", collect)
                if hostile
                else FRIENDLY.format(name=name)
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")

        def do_POST(self) -> None:
            self._seen()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, 1 << 20))
            if self.path.endswith("/collect") or self.path == "/collect":
                try:
                    report = json.loads(raw)
                except ValueError:
                    report = {"unparsable": raw[:200].decode("latin-1")}
                with state.lock:
                    state.reports.append(report)
            self._send(204, b"", "text/plain")

    return Handler


def main() -> None:
    """Serve until killed (the lifecycle backend stops it with SIGTERM)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--hostile", action="store_true")
    args = parser.parse_args()
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(args.name, args.hostile, _State(), args.port)
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
