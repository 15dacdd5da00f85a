"""The operator's web UI: server-rendered pages (Jinja2) and local static assets."""
