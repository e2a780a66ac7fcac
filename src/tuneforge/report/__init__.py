"""The run report: report.md (+ figures/*.png) and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path

from tuneforge.files import write_text
from tuneforge.report.figures import write_figures
from tuneforge.report.html import render_html
from tuneforge.report.markdown import render_report, summary_rows


def write_report(run_path: Path, title: str | None = None) -> Path:
    """(Re)write figures, report.md and report.html; returns the HTML path."""
    title = title or run_path.name
    figures = write_figures(run_path)
    text = render_report(run_path, title, figures)
    write_text(run_path / "report.md", text)
    html_path = run_path / "report.html"
    write_text(html_path, render_html(text, run_path, f"tuneforge run {title}"))
    return html_path


__all__ = ["render_report", "summary_rows", "write_report"]
