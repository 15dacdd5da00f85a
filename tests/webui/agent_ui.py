"""A test agent's own web UI: a tiny stdlib HTTP server, run as the agent's process.

``python agent_ui.py --port P --name N [--hostile]`` serves on 127.0.0.1:P:

- ``GET /``: the agent's page. Normally a friendly page with a form that, like
  a real agent UI, loads its own stylesheet (``app.css``), script
  (``app.js``) and image (``pixel.png``), fetches its own API
  (``api/hello``) and listens to its own event stream (``events``) - all by
  relative URLs, so through the gateway's prefix - and shows in its
  ``#checks`` list what loaded; with ``--hostile`` a page whose script,
  running inside the operator's browser (in the per-agent page's sandboxed
  frame), attacks the operator's origin and reports what it observed to
  ``POST /collect``;
- ``POST /collect``: stores a report; ``GET /collected``: every report and
  every request header this server received (tests read it directly, not
  through the gateway).

Self-contained (stdlib only): the lifecycle backend starts it with a bare
environment, and restarting the agent restarts this server.
"""

from __future__ import annotations

import argparse
import json
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FRIENDLY = """<!doctype html><html lang=en><head><meta charset=utf-8><title>{name} UI</title>
<style>body{{font:15px system-ui,sans-serif;margin:1rem;color:#123}}
.tag{{background:#ffe7a8;padding:.1rem .4rem;border-radius:4px}}</style>
<link rel=stylesheet href="app.css"></head>
<body><h1 id=agent-title data-name="{name}">{name}'s own UI</h1>
<p>I am agent <span class=tag>{name}</span>: this page comes from my own web server.</p>
<form method=get action="./"><label>Search my notes <input name=q></label>
<button>Search</button></form>
<p><img id=pixel src="pixel.png" alt="" width=8 height=8>
<span id=css-probe>my own assets:</span></p>
<ul id=checks><li id=script>script: not run</li><li id=stylesheet>stylesheet: ?</li>
<li id=image>image: ?</li><li id=fetch>fetch: ?</li><li id=eventsource>eventsource: ?</li></ul>
<script src="app.js"></script></body></html>"""

APP_CSS = b"#css-probe { display: inline-block; width: 123px; color: #064; }\n"

# Each check writes its outcome into the page (data-ok="yes"/"no"), then the
# list is marked done; the test reads it through the sandboxed frame.
APP_JS = b"""(async function () {
  const name = document.getElementById("agent-title").dataset.name;
  const set = (id, ok, detail) => {
    const el = document.getElementById(id);
    el.dataset.ok = ok ? "yes" : "no";
    el.textContent = id + ": " + (ok ? "loaded" : "failed") + (detail ? " (" + detail + ")" : "");
  };
  set("script", true);
  const width = getComputedStyle(document.getElementById("css-probe")).width;
  set("stylesheet", width === "123px", width);
  const img = document.getElementById("pixel");
  await new Promise(resolve => {
    const done = () => {
      set("image", img.naturalWidth === 1, img.naturalWidth + "px"); resolve();
    };
    if (img.complete) { done(); return; }
    img.addEventListener("load", done);
    img.addEventListener("error", () => { set("image", false, "error"); resolve(); });
  });
  try {
    const r = await fetch("api/hello");
    const body = await r.json();
    set("fetch", r.status === 200 && body.hello === name, r.status);
  } catch (e) { set("fetch", false, e.name); }
  await new Promise(resolve => {
    const es = new EventSource("events");
    const timer = setTimeout(() => {
      set("eventsource", false, "timeout"); es.close(); resolve();
    }, 8000);
    es.onmessage = ev => {
      clearTimeout(timer); es.close();
      set("eventsource", ev.data === "hello " + name, ev.data); resolve();
    };
  });
  document.getElementById("checks").dataset.done = "yes";
})();
"""


def _png_pixel() -> bytes:
    """A 1x1 PNG: one opaque green pixel (built here, so it is surely well-formed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\x00\x00\x99\x44")  # filter byte + one RGB pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PIXEL = _png_pixel()

# Every attempt is reported, with what the browser let it see. Ids 1-4 cover the
# questions and approvals a test creates. The page never learns the CSRF token:
# it tries a made-up one, and none.
HOSTILE = (Path(__file__).resolve().parent / "hostile.html").read_text(encoding="utf-8")


_ASSETS = {
    "/app.css": ("text/css; charset=utf-8", APP_CSS),
    "/app.js": ("text/javascript; charset=utf-8", APP_JS),
    "/pixel.png": ("image/png", PIXEL),
}


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
            route = self.path.partition("?")[0]
            if not hostile and route in _ASSETS:
                ctype, body = _ASSETS[route]
                self._send(200, body, ctype)
                return
            if not hostile and route == "/api/hello":
                self._send(200, json.dumps({"hello": name}).encode(), "application/json")
                return
            if not hostile and route == "/events":
                # One event, then the stream ends (EventSource would retry after a minute).
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(f"retry: 60000\ndata: hello {name}\n\n".encode())
                self.wfile.flush()
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
