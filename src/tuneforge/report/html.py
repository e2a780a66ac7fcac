"""report.html: the markdown report rendered to one self-contained page (figures inlined)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.6rem 0 1.2rem; }
code, pre { background: #f6f6f6; font-size: 0.88rem; }
pre { padding: 0.6rem; overflow-x: auto; }
blockquote { border-left: 3px solid #ccc; margin: 0.4rem 0; padding-left: 0.8rem; color: #444; }
h1 { border-bottom: 2px solid #4C72B0; }
"""


def render_html(markdown_text: str, run_path: Path, title: str) -> str:
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    body = re.sub(
        r'src="(figures/[\w.-]+\.png)"', lambda m: f'src="{_data_uri(run_path / m.group(1))}"', body
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _data_uri(png: Path) -> str:
    if not png.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
