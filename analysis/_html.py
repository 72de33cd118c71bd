"""Small HTML helpers for the report: escaping, tables, page shell.

Every value that may come from a log (run ids, axis and metric names,
completions, error messages) passes through :func:`esc`; the pages use no
script and no external resource, so they open offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

__all__ = ["esc", "num", "table", "page", "href", "save_png"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1180px;
color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}.muted{color:#666}.warn{color:#a15c00}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #eee;margin:4px 0}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-height:9em;overflow:auto}
nav a{margin-right:12px}.pill{display:inline-block;padding:0 6px;border-radius:8px;background:#eef}
"""


def esc(value: object) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value: object, digits: int = 4) -> str:
    """Compact number text; blank for missing or non-finite values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.{digits}g}"
    return esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[bool] | None = None) -> str:
    """An HTML table; cells are escaped text, or numbers formatted by :func:`num`.

    A cell given as ``("raw", html)`` is inserted as is (already escaped).
    """
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value, is_num in zip(row, numeric):
            if isinstance(value, tuple) and len(value) == 2 and value[0] == "raw":
                cells.append(f"<td>{value[1]}</td>")
            elif is_num:
                cells.append(f'<td class="n">{num(value)}</td>')
            else:
                cells.append(f"<td>{esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return '<p class="muted">none</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def href(path: str) -> str:
    """A relative URL for a path made of log-derived names (percent-encoded)."""
    return esc(quote(path, safe="/"))


def save_png(fig, path: Path, dpi: int = 90) -> str:
    """Write a Figure as PNG next to the page; return its file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path.name
