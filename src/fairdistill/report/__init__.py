"""Reports: a self-contained HTML file (inline SVG charts, no network) and a Markdown summary.

``build_report(run_dirs, out)`` renders any run directories; runs of one benchmark are shown side
by side (e.g. base model, then the debiased or distilled one). ``build_markdown_summary`` writes
the headline tables for a model card.
"""
from .build import build_markdown_summary, build_report, load_run, load_runs, redact

__all__ = ["build_report", "build_markdown_summary", "load_run", "load_runs", "redact"]

