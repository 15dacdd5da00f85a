"""The audit report for people (terminal, HTML) and machines (JSON). Pure.

:func:`matrix_grid_html` (the policy's access matrix) and
:func:`reachability_html` (the probe's heat-map) are the pictures of the
report; they take plain data and return an HTML fragment (styles in
:data:`STYLE`), so the web UI can show the very same pictures.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from enforcer.audit.report import Report, Status, Table

__all__ = [
    "STYLE",
    "matrix_grid_html",
    "reachability_html",
    "render_html",
    "render_json",
    "render_text",
]

_MARK = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.WARN: "WARN", Status.SKIP: "SKIP"}
_CHANNEL_SHORT = {"gateway": "G", "socket": "S", "priv": "P"}
_CLASS_ORDER = ("operator", "public", "agent-self", "system")


def _text_table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> str:
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_text(report: Report, *, verbose_tables: bool = True) -> str:
    """The terminal report: per section a PASS/FAIL table of checks, findings, facts."""
    out = [f"hive-boundary audit of {report.policy_dir} (revision {report.revision})", ""]
    for section in report.sections:
        out += [f"== {section.title} ==", ""]
        out.append(
            _text_table(
                ("result", "check", "summary"),
                [(_MARK[c.status], c.title, c.summary) for c in section.checks],
            )
        )
        for c in section.checks:
            if c.findings:
                out += ["", f"  {_MARK[c.status]} {c.title}:"]
                for f in c.findings:
                    out.append(f"    - {f}")
                    line = f.detail.get("line")
                    if line:
                        out.append(f"        {line}")
            if c.notes:
                out += ["", f"  notes on {c.title}:"] + [f"    . {n}" for n in c.notes]
        if verbose_tables:
            for t in section.tables:
                if t.rows:
                    out += ["", f"  {t.title}:", _text_table(t.headers, t.rows, "    ")]
        out.append("")
    n = len(report.findings)
    out.append(
        "RESULT: PASS - every check holds"
        if report.ok
        else f"RESULT: FAIL - {n} finding(s) in {sum(c.failed for c in report.checks)} check(s)"
    )
    return "\n".join(out)


def render_json(report: Report) -> str:
    """What ``--json`` prints."""
    return json.dumps(report.to_json(), indent=2, sort_keys=True)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.pass{background:#d7f5dc}.fail{background:#f8cfcf}.warn{background:#fdf0c4}.skip{background:#eee}
.grid td{text-align:center;min-width:1.6em;font-family:monospace}
.grid th.v{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.c-operator{background:#cfe0fb}.c-public{background:#e6e6e6}.c-agent-self{background:#d7f5dc}
.c-system{background:#e8d9f7}.bad{background:#e53935;color:#fff;font-weight:bold}
.heat td{width:1.4em;height:1.4em;text-align:center;font-size:11px}
.ok-allow{background:#43a047;color:#fff}.ok-deny{background:#eceff1;color:#90a4ae}
.mismatch{background:#e53935;color:#fff;font-weight:bold}
.legend span{display:inline-block;padding:0 .5em;margin-right:.5em}
code{background:#f4f4f4;padding:0 2px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def matrix_grid_html(
    matrix: Mapping[str, Any],
    classes: Mapping[str, str],
    flagged_lines: Iterable[str] = (),
) -> str:
    """The access matrix as a grid: actions (rows, grouped by class) x subjects (columns).

    ``matrix`` is :meth:`enforcer.policy.matrix.AccessMatrix.to_json`; ``classes``
    maps action -> authority class; a cell lists the channels (G/S/P) on which the
    subject holds the action, and is red when it comes from a flagged line
    (``policy.csv:N``, e.g. a line an audit finding names).
    """
    flagged = set(flagged_lines)
    subjects: list[str] = list(matrix["subjects"])
    cells: Mapping[str, list[dict[str, str]]] = matrix["cells"]
    order = {c: i for i, c in enumerate(_CLASS_ORDER)}
    actions = sorted(matrix["actions"], key=lambda a: (order.get(classes.get(a, ""), 9), a))
    head = "".join(f'<th class="v">{_e(s)}</th>' for s in subjects)
    rows = []
    for act in actions:
        cls = classes.get(act, "")
        tds = []
        for s in subjects:
            held = [x for x in cells.get(s, []) if x["action"] == act]
            chans = "".join(sorted({_CHANNEL_SHORT.get(x["channel"], "?") for x in held}))
            lines = sorted({x["rule"] for x in held})
            bad = any(r in flagged for r in lines)
            css = "bad" if bad else (f"c-{cls}" if held else "")
            tip = "; ".join(f"{x['channel']} {x['resource']} ({x['rule']})" for x in held)
            tds.append(f'<td class="{css}" title="{_e(tip)}">{_e(chans or "·")}</td>')
        rows.append(
            f'<tr><th>{_e(act)}</th><td class="c-{_e(cls)}">{_e(cls)}</td>{"".join(tds)}</tr>'
        )
    legend = (
        '<p class="legend"><span class="c-operator">operator</span><span class="c-public">public'
        '</span><span class="c-agent-self">agent-self</span><span class="c-system">system</span>'
        '<span class="bad">flagged line</span> G gateway, S socket, P priv; · not allowed</p>'
    )
    return (
        f'{legend}<table class="grid"><tr><th>action</th><th>class</th>{head}</tr>'
        + "".join(rows)
        + "</table>"
    )


def reachability_html(cells: Sequence[Mapping[str, Any]]) -> str:
    """The probe's heat-map: sources (rows) x targets (columns).

    ``cells`` are :meth:`netns.probe.ProbeResult.to_json` cells (``source``,
    ``target``, ``expected``, ``reached``, ``outcome``, ``address``, ``port``).
    Green: allowed and reached; grey: denied and blocked; red: a mismatch.
    """
    if not cells:
        return "<p>No probe was run (<code>--probe</code>).</p>"
    sources = sorted({c["source"] for c in cells})
    targets = sorted({c["target"] for c in cells})
    at = {(c["source"], c["target"]): c for c in cells}
    head = "".join(f'<th class="v">{_e(t)}</th>' for t in targets)
    rows = []
    for s in sources:
        tds = []
        for t in targets:
            c = at.get((s, t))
            if c is None:
                tds.append("<td></td>")
                continue
            css = (
                "mismatch"
                if c["reached"] != c["expected"]
                else ("ok-allow" if c["expected"] else "ok-deny")
            )
            tip = (
                f"{s} -> {t} [{c['address']}]:{c['port']}: expected "
                f"{'allow' if c['expected'] else 'deny'}, observed {c['outcome']}"
            )
            tds.append(f'<td class="{css}" title="{_e(tip)}">{"●" if c["reached"] else "·"}</td>')
        rows.append(f"<tr><th>{_e(s)}</th>{''.join(tds)}</tr>")
    legend = (
        '<p class="legend"><span class="ok-allow">allowed, reached</span>'
        '<span class="ok-deny">denied, blocked</span><span class="mismatch">mismatch</span></p>'
    )
    return f'{legend}<table class="heat grid"><tr><th>source</th>{head}</tr>{"".join(rows)}</table>'


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<h3>{_e(t.title)}</h3><table><tr>{head}</tr>{body}</table>"


def render_html(report: Report) -> str:
    """A self-contained page (no external resources): checks, findings, both pictures."""
    verdict = "PASS: every check holds" if report.ok else f"FAIL: {len(report.findings)} finding(s)"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>hive-boundary audit</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>hive-boundary audit</h1>",
        f"<p>Policy <code>{_e(report.policy_dir)}</code>, revision <code>{_e(report.revision)}"
        f'</code></p><p class="{"pass" if report.ok else "fail"}"><b>{_e(verdict)}</b></p>',
    ]
    for section in report.sections:
        parts.append(
            f"<h2>{_e(section.title)}</h2><table><tr><th>result</th><th>check</th><th>summary</th></tr>"
        )
        for c in section.checks:
            parts.append(
                f'<tr><td class="{c.status.value}">{_MARK[c.status]}</td><td>{_e(c.title)}</td>'
                f"<td>{_e(c.summary)}</td></tr>"
            )
        parts.append("</table>")
        for c in section.checks:
            if c.findings or c.notes:
                items = "".join(
                    f"<li><code>{_e(f.where)}</code> {_e(f.what)}"
                    + (f"<br><code>{_e(f.detail['line'])}</code>" if f.detail.get("line") else "")
                    + "</li>"
                    for f in c.findings
                )
                items += "".join(f"<li>{_e(n)}</li>" for n in c.notes)
                parts.append(f"<h3>{_e(c.title)}</h3><ul>{items}</ul>")
        if section.name == "policy" and "matrix" in report.extras:
            parts.append("<h3>access matrix</h3>")
            parts.append(
                matrix_grid_html(
                    report.extras["matrix"],
                    report.extras.get("classes", {}),
                    report.extras.get("flagged_lines", ()),
                )
            )
        if section.name == "network":
            parts.append("<h3>reachability heat-map</h3>")
            parts.append(reachability_html(report.extras.get("reachability", [])))
        for t in section.tables:
            parts.append(_html_table(t))
    parts.append("</body></html>")
    return "\n".join(parts)
