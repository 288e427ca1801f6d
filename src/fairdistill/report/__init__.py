"""Reports: a self-contained HTML file (inline SVG charts, no network) and a Markdown summary.

``build_report(run_dirs, out)`` renders any run directories; runs of one benchmark are shown side
by side (e.g. base model, then the debiased or distilled one). ``build_markdown_summary`` writes
the headline tables for a model card.
"""
from .build import build_markdown_summary, build_report, load_run, load_runs, redact

__all__ = ["build_report", "build_markdown_summary", "load_run", "load_runs", "redact"]


# ``fairdistill.report(runs, out=...)`` is the Python API's report function, and ``fairdistill.report`` is also
# this package: importing it replaces the package attribute, so the package itself answers the call.
import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
    def __call__(self, runs, out="report.html", **kwargs):
        from ..api import report

        return report(runs, out, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
