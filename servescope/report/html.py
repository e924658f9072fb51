"""The report as one self-contained HTML page: inline CSS, figures as base64 PNG, no script, no network.

Everything read from a run (paths, ids, manifest values, evidence strings) goes through
``esc`` before it reaches the page; only ``Markup`` (HTML this module built from escaped
parts) is inserted as is. The page has no JavaScript at all, so a malicious manifest can
at worst show its text.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


class Markup(str):
    """A string of trusted HTML, built by this module from escaped parts."""


def esc(value: Any) -> Markup:
    """Return value as text escaped for HTML (Markup passes through unchanged)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], separator: str = "") -> Markup:
    """Return the parts escaped (Markup kept) and joined by a literal separator."""
    return Markup(separator.join(esc(p) for p in parts))


def tag(name: str, content: Any = "", **attributes: Any) -> Markup:
    """Return <name attributes>content</name>, content and attribute values escaped (class_ gives class)."""
    attrs = "".join(f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"'
                    for key, value in attributes.items() if value is not None)
    return Markup(f"<{name}{attrs}>{esc(content)}</{name}>")


def swatch(color: str) -> Markup:
    """Return a small colored square (a run's legend color)."""
    return Markup(f'<span class="swatch" style="background:{esc(color)}"></span>')


def run_name(label: str, color: str) -> Markup:
    """Return a run's name with its color swatch."""
    return tag("span", join([swatch(color), tag("span", label, class_="run-name")]), class_="run")


def status_badge(status: str) -> Markup:
    """Return a pass / warn / fail badge."""
    return tag("span", status, class_=f"badge badge-{status}")


def number(value: Any, scale: float = 1.0, digits: int | None = None) -> str:
    """Return a number for a table cell ('—' when missing), with sensible significant digits."""
    if value is None or isinstance(value, bool):
        return "—" if value is None else str(value)
    if isinstance(value, int) and scale == 1.0:
        return f"{value:,}"
    x = float(value) * scale
    if not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else (2 if abs(x) >= 0.1 else 3))
    return f"{x:,.{digits}f}"


def value_text(value: Any) -> str:
    """Return a manifest value as text: JSON for lists and dicts, 'null' for None."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "null" if value is None else str(value)


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], *, class_: str = "",
          row_classes: Sequence[str] | None = None) -> Markup:
    """Return an HTML table; cells are escaped unless they are Markup."""
    head = join(tag("th", cell) for cell in header)
    body = []
    for k, row in enumerate(rows):
        cls = row_classes[k] if row_classes is not None and k < len(row_classes) else None
        body.append(tag("tr", join(tag("td", cell) for cell in row), class_=cls or None))
    return tag("table", join([tag("thead", tag("tr", head)), tag("tbody", join(body))]), class_=class_ or None)


def bullet_list(items: Iterable[Any]) -> Markup:
    """Return a <ul> of escaped items."""
    return tag("ul", join(tag("li", item) for item in items))


def paragraph(*parts: Any) -> Markup:
    """Return a <p> of the escaped parts."""
    return tag("p", join(parts))


@dataclass
class EmbeddedFigure:
    """One figure of the page: its PNG, the file it was also written to, and its text."""

    anchor: str
    title: str
    png: bytes
    file_name: str  # relative to the report directory
    how_to_read: str
    width_px: int
    height_px: int


def figure(fig: EmbeddedFigure) -> Markup:
    """Return a <figure> with the PNG (its title drawn in it) embedded as a data URI, and how to read it."""
    data = base64.b64encode(fig.png).decode("ascii")
    image = Markup(f'<img src="data:image/png;base64,{data}" alt="{esc(fig.title)}" '
                   f'width="{fig.width_px}" height="{fig.height_px}" loading="eager">')
    caption = tag("figcaption", join([
        tag("span", fig.how_to_read, class_="how"),
        " ",
        tag("a", "PNG", href=fig.file_name, class_="png-link"),
    ]))
    return tag("figure", join([image, caption]), id=fig.anchor)


def section(anchor: str, title: str, parts: Iterable[Any], intro: Any = None) -> Markup:
    """Return a <section> with a heading, an optional intro paragraph and its parts."""
    body = [tag("h2", title)]
    if intro:
        body.append(tag("p", intro, class_="intro"))
    body.extend(parts)
    return tag("section", join(body), id=anchor)


def page(title: str, subtitle: Any, nav: Sequence[tuple[str, str]], sections: Sequence[Markup],
         footer: Any) -> str:
    """Return the whole HTML document."""
    links = join(tag("a", text, href=f"#{anchor}") for anchor, text in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No script, no remote resource: the page works offline and cannot run anything a run put in it.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data: 'self'; "
        "style-src 'unsafe-inline'\">"
        f"{tag('title', title)}<style>{CSS}</style></head><body>"
        f"<header>{tag('h1', title)}{tag('div', subtitle, class_='subtitle')}</header>"
        f"<nav>{links}</nav><main>{join(sections)}</main>"
        f"<footer>{esc(footer)}</footer></body></html>\n"
    )


CSS = """
:root { --ink:#1d2329; --muted:#5b6670; --line:#dde2e6; --bg:#f6f7f9; --card:#fff;
        --pass:#1b7f3b; --warn:#a86a00; --fail:#b3261e; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#1f2a36; color:#fff; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; letter-spacing:.2px; }
.subtitle { color:#c9d3dc; font-size:14px; }
nav { position:sticky; top:0; z-index:2; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 32px; display:flex; flex-wrap:wrap; gap:4px 18px; font-size:14px; }
nav a { color:#1f5f99; text-decoration:none; }
nav a:hover { text-decoration:underline; }
main { max-width:1260px; margin:0 auto; padding:8px 24px 40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 24px;
          margin:22px 0; }
h2 { margin:0 0 8px; font-size:20px; font-weight:600; }
h3 { margin:18px 0 6px; font-size:16px; font-weight:600; }
p.intro { color:var(--muted); margin:0 0 10px; max-width:980px; }
figure { margin:10px 0 22px; }
figure img { display:block; max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13.5px; margin-top:6px; max-width:1000px; }
figcaption a.png-link { font-size:12px; color:#1f5f99; margin-left:6px; }
table { border-collapse:collapse; font-size:13.5px; margin:8px 0 16px; }
th, td { border-bottom:1px solid var(--line); padding:5px 10px; text-align:left; vertical-align:top; }
th { background:#f0f2f4; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.numbers td:not(:first-child):not(:nth-child(2)) { text-align:right; font-variant-numeric:tabular-nums; }
tr.diff td { background:#fff6db; }
tr.bad td { background:#fde8e6; }
tr.group td { background:#f7f8fa; font-weight:600; }
.swatch { display:inline-block; width:11px; height:11px; border-radius:2px; margin-right:6px;
          vertical-align:-1px; }
.run-name { font-weight:600; }
.run { white-space:nowrap; }
tr.first td { border-top:2px solid #c9d0d6; }
.badge { display:inline-block; min-width:44px; text-align:center; padding:1px 8px; border-radius:10px;
         font-size:12px; font-weight:600; color:#fff; text-transform:uppercase; letter-spacing:.4px; }
.badge-pass { background:var(--pass); } .badge-warn { background:var(--warn); }
.badge-fail { background:var(--fail); }
ul { margin:4px 0; padding-left:20px; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:6px 0 4px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:150px; }
.card .k { color:var(--muted); font-size:12px; } .card .v { font-size:20px; font-weight:600; }
.note { color:var(--muted); font-size:13px; }
.warning { background:#fde8e6; border-left:4px solid var(--fail); padding:6px 12px; margin:8px 0; font-size:13.5px; }
.scroll { overflow-x:auto; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding:10px 0 28px; }
"""
