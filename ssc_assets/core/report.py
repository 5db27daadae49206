"""Self-contained HTML report (figures embedded as base64 PNG, no external files or scripts)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.9em; } .thesis { background: #fff7e0; }
figure { display: inline-block; margin: 0.5em; } figcaption { font-size: 0.8em; color: #555; }
"""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, escaped
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)


def _table_html(caption: str, df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th{' class=thesis' if str(c).startswith('thesis') else ''}>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        row_thesis = str(r.iloc[0]).startswith("thesis")  # transposed tables: one metric per row
        cells = "".join(f"<td{' class=thesis' if row_thesis or str(c).startswith('thesis') else ''}>{fmt(v)}</td>"
                        for c, v in r.items())
        rows.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(title: str, intro: list[str], sections: list[Section], footer: str = "") -> str:
    """The report as one HTML string. Columns, or rows whose first cell, start with ``thesis`` are shaded."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(p)}</p>" for p in intro]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        parts += [_table_html(c, t) for c, t in s.tables]
        for cap, png in s.figures:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'/>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    if footer:
        parts.append(f"<p class=note>{html.escape(footer)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
